"""The status page: groups, services, history, badges and a JSON API, served by the exporter itself.

Modules: ``model`` decides what the page says, ``html`` and ``badges`` write it, ``queries``
holds every PromQL query it sends and ``prometheus`` sends them, ``routes`` serves it all.
"""

from __future__ import annotations

from aiohttp import web

from exporter.runtime import Exporter


def install(app: web.Application, exporter: Exporter) -> None:
    """Add the status page's routes to the exporter's app."""
    from exporter.page.routes import install as install_routes

    install_routes(app, exporter)
