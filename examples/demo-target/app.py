"""A service to probe in the demo stack: healthy, slow, flaky and failing endpoints over HTTP and HTTPS.

    python examples/demo-target/app.py --http 127.0.0.1:8080 --https 127.0.0.1:8443

Routes, the same on both ports:
  /healthy  200 at once
  /slow     200 after --slow seconds (past the demo's latency objective)
  /flaky    503 for one request in --flaky-every, 200 otherwise
  /fail     500 always

The HTTPS port serves a self-signed certificate made at start that expires after
--cert-days days, so the certificate alerts and the TLS panels have something to show.
It needs only aiohttp and cryptography, both dependencies of the exporter itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import signal
import ssl
import tempfile
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_NAMES = ("demo-target", "localhost", "127.0.0.1", "::1")


def self_signed_certificate(names: list[str], days: float) -> tuple[bytes, bytes]:
    """A certificate for ``names`` (host names or IP addresses) and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_context(names: list[str], days: float) -> ssl.SSLContext:
    cert_pem, key_pem = self_signed_certificate(names, days)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only; they live just long enough to be read.
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def make_app(slow_seconds: float, flaky_every: int) -> web.Application:
    requests_to_flaky = 0

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="demo target: /healthy /slow /flaky /fail\n")

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(slow_seconds)
        return web.Response(text="ok, eventually\n")

    async def flaky(request: web.Request) -> web.Response:
        nonlocal requests_to_flaky
        requests_to_flaky += 1
        if requests_to_flaky % flaky_every == 0:
            return web.Response(status=503, text="unavailable this time\n")
        return web.Response(text="ok this time\n")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="always failing\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthy", healthy)
    app.router.add_get("/slow", slow)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/fail", fail)
    return app


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    http_host, http_port = host_port(args.http)
    https_host, https_port = host_port(args.https)
    context = tls_context(args.name or list(DEFAULT_NAMES), args.cert_days)
    runner = web.AppRunner(make_app(args.slow, args.flaky_every), access_log=None)
    await runner.setup()
    try:
        # HTTPS first: once plain HTTP answers, both ports do.
        await web.TCPSite(runner, https_host, https_port, ssl_context=context).start()
        await web.TCPSite(runner, http_host, http_port).start()
        print(f"demo target on http://{args.http} and https://{args.https}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", default="0.0.0.0:8080", help="HOST:PORT for plain HTTP")
    parser.add_argument("--https", default="0.0.0.0:8443", help="HOST:PORT for HTTPS")
    parser.add_argument("--slow", type=float, default=1.2, help="seconds /slow takes to answer")
    parser.add_argument("--flaky-every", type=int, default=4, help="/flaky fails one request in this many")
    parser.add_argument("--cert-days", type=float, default=10, help="days until the certificate expires")
    parser.add_argument(
        "--name",
        action="append",
        help=f"name or address the certificate is for; repeat for more (default: {', '.join(DEFAULT_NAMES)})",
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
