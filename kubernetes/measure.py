"""Measures the exporter's memory and CPU with a small realistic config, to size Kubernetes resources.

Run from the repository root:

    python kubernetes/measure.py                 # 20 services at 15s, a one-minute window
    python kubernetes/measure.py --services 200  # more services, to see how usage grows

It starts a local HTTP target (in this process) and the exporter as a subprocess on 127.0.0.1,
scrapes /metrics every 15 seconds as Prometheus would, and reads the exporter's VmRSS and VmHWM
from /proc/PID/status and its user+system CPU ticks from /proc/PID/stat. Services are a realistic
mix: mostly HTTP, some TCP connects and a few ICMP echoes of 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class _Target(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><title>ok</title><p>ok</p>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_text(services: int, target_port: int, interval: str) -> str:
    lines = [
        "global:",
        f"  interval: {interval}",
        "  timeout: 5s",
        "  location: measure",
        "modules:",
        "  http_2xx: {prober: http, http: {preferred_ip_protocol: ip4}}",
        "  tcp_connect: {prober: tcp, tcp: {preferred_ip_protocol: ip4}}",
        "  icmp: {prober: icmp, icmp: {preferred_ip_protocol: ip4}}",
        "services:",
    ]
    for i in range(services):
        # 70% HTTP, 20% TCP, 10% ICMP: roughly what an outage board watches.
        kind = i % 10
        if kind < 7:
            module, target = "http_2xx", f"http://127.0.0.1:{target_port}/service/{i}"
        elif kind < 9:
            module, target = "tcp_connect", f"127.0.0.1:{target_port}"
        else:
            module, target = "icmp", "127.0.0.1"
        lines.append(
            f"  - {{name: svc-{i:04d}, group: group-{i % 5}, target: '{target}', module: {module},"
            " objectives: {availability: 0.999, latency: 500ms}}"
        )
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the command name.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the exporter did not become ready at {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--interval", default="15s")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "outage-exporter.yml"
        config.write_text(config_text(args.services, server.server_address[1], args.interval))
        started = time.monotonic()
        exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=ROOT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(f"{base}/-/ready", started + 30)
            startup_cpu = cpu_seconds(exporter.pid)
            startup_rss = memory_kib(exporter.pid)["VmRSS"]
            time.sleep(args.warmup)
            cpu_start, t_start = cpu_seconds(exporter.pid), time.monotonic()
            rss: list[int] = []
            peak_cpu = 0.0
            next_scrape = t_start
            last_cpu, last_t = cpu_start, t_start
            while (now := time.monotonic()) - t_start < args.window:
                if now >= next_scrape:
                    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
                        response.read()
                    next_scrape += 15.0
                time.sleep(1.0)
                cpu, t = cpu_seconds(exporter.pid), time.monotonic()
                peak_cpu = max(peak_cpu, (cpu - last_cpu) / (t - last_t))
                last_cpu, last_t = cpu, t
                rss.append(memory_kib(exporter.pid)["VmRSS"])
            cpu_used = cpu_seconds(exporter.pid) - cpu_start
            elapsed = time.monotonic() - t_start
            hwm = memory_kib(exporter.pid)["VmHWM"]
        finally:
            exporter.terminate()
            exporter.wait(timeout=10)
    server.shutdown()
    mib = 1024
    print(f"services: {args.services} at {args.interval} ({sys.version.split()[0]}, {os.uname().machine})")
    print(f"startup: {startup_cpu:.2f} CPU seconds to ready, RSS {startup_rss / mib:.1f} MiB")
    print(
        f"RSS over {elapsed:.0f}s: min {min(rss) / mib:.1f} MiB, max {max(rss) / mib:.1f} MiB,"
        f" peak (VmHWM) {hwm / mib:.1f} MiB"
    )
    print(
        f"CPU over {elapsed:.0f}s: {cpu_used:.2f} s, average {1000 * cpu_used / elapsed:.1f} millicores,"
        f" busiest second {1000 * peak_cpu:.0f} millicores"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
