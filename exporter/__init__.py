"""outage-exporter: probes services on its own schedule and exports what it saw to Prometheus."""

__version__ = "0.1.0"
