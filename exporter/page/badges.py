"""SVG badges (state, uptime, latency) and the same facts as shields.io endpoint JSON."""

from __future__ import annotations

from html import escape

# Approximate advance widths of Verdana 11px, the badge font, by character class; a badge only
# needs its boxes wide enough, not typeset exactly.
_NARROW = set("fijlrt.,:;!|'() ")
_WIDE = set("mwMW%@")

COLOURS = {
    "up": "#2e7d32",
    "degraded": "#b26a00",
    "down": "#c62828",
    "maintenance": "#1565c0",
    "unknown": "#616161",
}
# shields.io's named colours for the endpoint JSON.
SHIELDS_COLOURS = {
    "up": "brightgreen",
    "degraded": "orange",
    "down": "red",
    "maintenance": "blue",
    "unknown": "lightgrey",
}


def text_width(text: str) -> int:
    return sum(4 if c in _NARROW else 10 if c in _WIDE else 7 for c in text) + 10


def badge_svg(label: str, message: str, colour: str) -> bytes:
    """A flat two-part badge, readable by screen readers through its title."""
    lw, mw = text_width(label), text_width(message)
    total = lw + mw
    label_e, message_e = escape(label), escape(message)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f'aria-label="{label_e}: {message_e}"><title>{label_e}: {message_e}</title>'
        f'<rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>'
        '<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">'
        f'<text x="{lw / 2:.1f}" y="14">{label_e}</text><text x="{lw + mw / 2:.1f}" y="14">{message_e}</text>'
        "</g></svg>"
    ).encode()


def uptime_colour(ratio: float | None) -> tuple[str, str]:
    """(SVG colour, shields colour) for an uptime ratio."""
    if ratio is None:
        return COLOURS["unknown"], "lightgrey"
    if ratio >= 0.999:
        return COLOURS["up"], "brightgreen"
    if ratio >= 0.99:
        return "#689f38", "yellowgreen"
    if ratio >= 0.95:
        return COLOURS["degraded"], "orange"
    return COLOURS["down"], "red"


def latency_colour(seconds: float | None, objective: float | None) -> tuple[str, str]:
    if seconds is None:
        return COLOURS["unknown"], "lightgrey"
    if objective is not None and seconds > objective:
        return COLOURS["degraded"], "orange"
    return COLOURS["up"], "brightgreen"
