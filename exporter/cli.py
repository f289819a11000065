"""The command line: run the exporter, check config files, or probe one target now."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from exporter import __version__
from exporter.accesslog import AccessLogger
from exporter.config import Config, load_config, parse_config, share_equal_parts
from exporter.errors import ConfigError, WebConfigError
from exporter.logs import LEVELS, setup_logging
from exporter.modules import Module
from exporter.probes import PROBERS
from exporter.sharding import Shard, parse_shard_index
from exporter.types import Duration

DEFAULT_LISTEN = ":9715"
log = logging.getLogger("exporter")


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outage-exporter",
        description="Probe services on a schedule and export their latency and success to Prometheus.",
        epilog="Subcommands: 'outage-exporter check-config FILE...' and "
        "'outage-exporter probe TARGET'. See --help of each.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default="outage-exporter.yml",
        help="config file (default: %(default)s)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help="address to listen on, HOST:PORT (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        default="",
        help="TLS and basic auth settings in exporter-toolkit's format",
    )
    parser.add_argument("--location", default=None, help="location stamped on every probe series")
    parser.add_argument(
        "--config.auto-reload-interval",
        dest="watch_interval",
        default="10s",
        help="how often to check the config file and discovered service files for changes;"
        " 0s turns it off (default: %(default)s)",
    )
    parser.add_argument(
        "--shard.count", dest="shard_count", type=int, default=1, help="replicas sharing the services"
    )
    parser.add_argument(
        "--shard.index",
        dest="shard_index",
        default="0",
        help="this replica's shard, 0-based, or 'hostname' to take a StatefulSet ordinal (default: 0)",
    )
    parser.add_argument(
        "--workers",
        type=_worker_count,
        default=usable_cpus(),
        help="probe worker processes; 1 probes in the one process that also serves HTTP"
        " (default: the usable CPUs, %(default)s here)",
    )
    _logging_flags(parser)
    parser.add_argument("--version", action="version", version=f"outage-exporter {__version__}")
    return parser


def usable_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may run on, and no more than a container's CPU limit allows.

    A pod limited to one CPU on a 64-core node sees all 64 in its affinity mask; the cgroup v2
    quota (``cpu.max``: ``QUOTA PERIOD`` or ``max PERIOD``) is what it gets.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        pass
    return max(1, cpus)


def _worker_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, got {text!r}")
    return int(text)


def _logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log.level", dest="log_level", choices=list(LEVELS), default="info")
    parser.add_argument("--log.format", dest="log_format", choices=["logfmt", "json"], default="logfmt")


def parse_listen(address: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``:PORT`` or ``[v6]:PORT`` into a host (None for all) and a port."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--web.listen-address must be HOST:PORT, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port_text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check-config":
        return check_config(args[1:])
    if args and args[0] == "probe":
        return probe_command(args[1:])
    return serve(args)


def check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="outage-exporter check-config",
        description="Check config files and report every error.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    failed = False
    for file in args.files:
        try:
            config = load_config(file)
        except ConfigError as err:
            failed = True
            for issue in err.issues:
                print(f"{file}: {issue}")
            continue
        print(
            f"{file}: OK: {len(config.services)} services, {len(config.modules)} modules, "
            f"{len(config.probe_allowlist)} allowlist entries"
        )
    return 1 if failed else 0


def probe_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="outage-exporter probe",
        description="Probe one target now and print the result, its phases and its metrics.",
    )
    parser.add_argument("target")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--module", help="module from the config file (default: http_2xx if defined)")
    group.add_argument("--prober", choices=list(PROBERS), help="probe with this kind's defaults")
    parser.add_argument("--config.file", dest="config_file", default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds (default: from config)")
    _logging_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config_file) if args.config_file else parse_config("")
    except ConfigError as err:
        for issue in err.issues:
            print(f"{args.config_file}: {issue}", file=sys.stderr)
        return 2
    module = _probe_module(config, args.module, args.prober, args.target)
    if isinstance(module, str):
        print(module, file=sys.stderr)
        return 2
    timeout = args.timeout or float(module.timeout or config.global_.timeout)
    from exporter.collector import render_result
    from exporter.runner import run_probe
    from exporter.web import debug_text

    result = asyncio.run(run_probe(args.target, module, timeout))
    print(debug_text(args.target, module, result), end="")
    print("metrics:")
    sys.stdout.write(render_result(result, module.prober).decode())
    return 0 if result.success else 1


def _probe_module(config: Config, name: str | None, prober: str | None, target: str) -> Module | str:
    if name is not None:
        module = config.modules.get(name)
        if module is None:
            known = ", ".join(sorted(config.modules)) or "none"
            return f"unknown module {name!r} (modules: {known})"
        return module
    if prober is not None:
        return Module(prober=prober)
    if "http_2xx" in config.modules:
        return config.modules["http_2xx"]
    # Without a hint, a URL is probed over HTTP and host:port over TCP.
    return Module(prober="http" if "://" in target or ":" not in target else "tcp")


def serve(argv: list[str]) -> int:
    args = _server_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as err:
        log.error("%s", err)
        return 2
    try:
        watch_interval = float(Duration.from_yaml(args.watch_interval))
        shard = Shard(parse_shard_index(args.shard_index, socket.gethostname()), args.shard_count)
    except ValueError as err:
        log.error(
            "%s", str(err).replace("must be a duration", "--config.auto-reload-interval must be a duration")
        )
        return 2
    try:
        config = share_equal_parts(load_config(args.config_file))
    except ConfigError as err:
        for issue in err.issues:
            log.error("invalid config: %s", issue)
        return 1
    from exporter.webconfig import WebConfig, auth_middleware, load_web_config

    try:
        web_config = load_web_config(args.web_config) if args.web_config else WebConfig()
        ssl_context = web_config.ssl_context()
    except WebConfigError as err:
        log.error("invalid web config: %s", err)
        return 1
    _use_uvloop()
    from exporter.page.routes import access_middleware
    from exporter.web import EXPORTER, make_app

    auth = auth_middleware(web_config)
    app = make_app(
        config,
        config_file=args.config_file,
        location=args.location,
        shard=shard,
        watch_interval=watch_interval,
        # Without users or headers the middleware would pass every request through unchanged,
        # at a cost every /probe request pays.
        middlewares=(access_middleware(web_config, auth),) if auth.needed else (),
        workers=args.workers,
        worker_argv=("--log.level", args.log_level, "--log.format", args.log_format),
    )
    app.on_cleanup.append(auth.close)

    async def on_startup(app: web.Application) -> None:
        exporter = app[EXPORTER]
        # The config and its services live as long as the process: moving them out of the
        # collector's sight keeps full collections short at thousands of services.
        gc.collect()
        gc.freeze()
        # Every probe leaves a result that lives until the next one, so the young generations
        # fill quickly; collecting them less often keeps pauses from landing on the schedule.
        gc.set_threshold(50_000, 20, 100)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(exporter.reload()))
        log.info(
            "outage-exporter %s started: %d services (shard %d of %d), %d probe worker%s,"
            " location %s, listening on %s",
            __version__,
            len(exporter.services),
            shard.index,
            shard.count,
            args.workers,
            "" if args.workers == 1 else "s",
            exporter.location,
            args.listen,
        )

    app.on_startup.append(on_startup)
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            ssl_context=ssl_context,
            print=None,
            shutdown_timeout=5.0,
            access_log=logging.getLogger("aiohttp.access"),
            access_log_class=AccessLogger,
        )
    except OSError as err:
        log.error("cannot listen on %s: %s", args.listen, err.strerror or err)
        return 1
    log.info("outage-exporter stopped")
    return 0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
