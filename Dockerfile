# The outage-exporter image: a wheel built in one stage, installed in a slim one.
#
#   docker build -t outage-exporter .
#   docker run -p 9715:9715 -v $PWD/my-config.yml:/etc/outage-exporter/config.yml:ro outage-exporter
#
# Needs BuildKit (the default builder of Docker 23 and later, and of `docker compose`).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The exporter's wheel and those of its dependencies (uvloop included), for an offline install.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[fast]'

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The wheels are mounted for this one step, so they take no room in the image.
# DL3013 asks for pinned versions: --no-index installs the wheels built above and nothing else,
# so the version is the one in pyproject.toml and the dependencies' are those the builder chose.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels 'outage-exporter[fast]' \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin exporter
# A default configuration that probes the exporter itself; mount yours over it.
COPY examples/local.yml /etc/outage-exporter/config.yml
USER 10001:10001
EXPOSE 9715
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9715/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["outage-exporter", "--config.file=/etc/outage-exporter/config.yml"]
