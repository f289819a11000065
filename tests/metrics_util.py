"""Parse Prometheus text output into values the tests can compare."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    """Every sample as {(name, labels): value}."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(series: Series, name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    found = [v for (n, lb), v in series.items() if n == name and set(labels.items()) <= lb]
    assert len(found) == 1, f"expected one {name}{labels}, found {len(found)}"
    return found[0]


def labelsets(series: Series, name: str) -> list[dict[str, str]]:
    return [dict(lb) for (n, lb) in series if n == name]
