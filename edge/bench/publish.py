"""``okcell bench publish``: what publishing a result over OPC UA adds to the cycle.

Runs the real OPC UA server on 127.0.0.1 (Basic256Sha256 SignAndEncrypt, as in production) with subscribed clients receiving every ResultReady event, publishes results
at a line-like rate from the calling thread (as the cell's outputs stage does) and prints p50/p99 of the time
``publish`` takes on that thread (the cost to the cycle; acceptance: p99 < 2 ms), the publish -> event-received
latency at the clients, and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from okcell.memory import peak_rss_mb
from okcell.progress import Progress

BENCH_CLIENT_URI = "urn:okcell:bench-client"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=int, default=2000, help="results to publish (default 2000)")
    parser.add_argument("--rate", type=float, default=100.0, help="results per second, 0 = as fast as possible (default 100)")
    parser.add_argument("--subscribers", type=int, default=1, help="clients subscribed to ResultReady (default 1)")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels carried by each result (default 224)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge.runtime.control import CellStatus
    from edge.runtime.opcua_config import parse_opcua_config
    from edge.opcua.security import hash_password
    from edge.opcua.server import OpcUaServer
    from okcell.result import CellResult, InspectionResult

    if args.results < 1 or args.subscribers < 0 or args.rate < 0:
        print("okcell bench publish: --results >= 1, --subscribers >= 0, --rate >= 0", file=sys.stderr)
        return 2

    class IdleCell:
        """Only status() is used: the bench publishes results itself."""

        def status(self) -> CellStatus:
            return CellStatus("Operational", "", True, "bench", "bench", ("bench",), 0, 0, {}, None, None)

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="okcell-bench-publish-") as state:
        password = "bench"
        config = parse_opcua_config(
            {"endpoint": "opc.tcp://127.0.0.1:0/okcell", "security": ["Basic256Sha256_SignAndEncrypt"],
             "users": [{"name": "bench", "password_hash": hash_password(password, iterations=1000)}]},
            "bench", Path(state),
        )
        client_cert = _trusted_client_certificate(config.trusted_dir, Path(state) / "client")
        server = OpcUaServer(config, IdleCell())  # type: ignore[arg-type]
        server.start()
        listener = _Listener(server.endpoint_url, password, args.subscribers, client_cert)
        listener.start()
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
        anomaly = rng.random((args.size, args.size), dtype=np.float32)
        publish_ms: list[float] = []
        publish_cpu_ms: list[float] = []
        sent_at: dict[int, float] = {}
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        next_time = time.perf_counter()
        try:
            with Progress("published", args.results, "results") as progress:
                for cycle in range(1, args.results + 1):
                    inspection = InspectionResult("NOK" if cycle % 10 == 0 else "OK", 0.3, 0.5, "good", anomaly, {"cycle": 40.0})
                    result = CellResult(cycle, f"bench-{cycle}", time.time(), "bench", inspection, frame)
                    started, started_cpu = time.perf_counter(), time.thread_time()
                    server.publish(result)
                    ended, ended_cpu = time.perf_counter(), time.thread_time()
                    publish_cpu_ms.append((ended_cpu - started_cpu) * 1000.0)
                    sent_at[cycle] = time.monotonic()
                    publish_ms.append((ended - started) * 1000.0)
                    progress.advance()
                    next_time += period
                    pause = next_time - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
            time.sleep(1.0)  # let the last events reach the clients
        finally:
            received = listener.stop()
            server.stop()
    latency = [(received[key] - sent_at[key[1]]) * 1000.0 for key in received if key[1] in sent_at]
    peak_mb = peak_rss_mb()
    publish = np.asarray(publish_ms)
    print(f"okcell bench publish: {args.results} results at {args.rate:g}/s, {args.subscribers} subscriber(s), "
          "Basic256Sha256 SignAndEncrypt")
    print(f"  publish() on the cycle thread: p50 {np.percentile(publish, 50):.3f} ms  p99 {np.percentile(publish, 99):.3f} ms  "
          f"max {publish.max():.3f} ms  (acceptance: p99 < 2 ms)")
    cpu = np.asarray(publish_cpu_ms)
    print(f"  publish() CPU time of that thread: p50 {np.percentile(cpu, 50):.3f} ms  p99 {np.percentile(cpu, 99):.3f} ms  "
          "(wall minus CPU = waiting for the GIL or for a core on a busy machine)")
    if latency:
        lat = np.asarray(latency)
        print(f"  publish -> ResultReady at client: p50 {np.percentile(lat, 50):.2f} ms  p99 {np.percentile(lat, 99):.2f} ms")
    expected = args.results * args.subscribers
    print(f"  events received {len(received)}/{expected}")
    print(f"  peak RSS {peak_mb:.0f} MiB")
    return 0 if len(received) == expected else 1


class _Listener:
    """Subscribed clients in a child process (like a PLC elsewhere on the network: they do not compete with the cell
    for the GIL); returns when each (client, result id) event arrived, on the system-wide monotonic clock."""

    def __init__(self, url: str, password: str, clients: int, cert: tuple[Path, Path]) -> None:
        import multiprocessing

        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_listen, args=(url, password, clients, cert, child), daemon=True
        )

    def start(self) -> None:
        self._process.start()
        if not self._conn.poll(60):
            raise RuntimeError("bench listener did not subscribe within 60 s")
        self._conn.recv()

    def stop(self) -> dict[tuple[int, int], float]:
        self._conn.send("stop")
        received = self._conn.recv() if self._conn.poll(30) else {}
        self._process.join(10)
        return received


def _trusted_client_certificate(trusted_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A client certificate for the listener, placed in the server's trusted folder."""
    import shutil
    import socket

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True)
    trusted_dir.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "bench_client.der", folder / "bench_client.pem"
    asyncio.run(setup_self_signed_certificate(
        key, cert, BENCH_CLIENT_URI, socket.gethostname(), [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "okcell bench"}
    ))
    shutil.copy(cert, trusted_dir / cert.name)
    return cert, key


def _listen(url: str, password: str, clients: int, cert: tuple[Path, Path], conn: Any) -> None:
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    asyncio.run(_listen_async(url, password, clients, cert, conn))


async def _listen_async(url: str, password: str, count: int, cert: tuple[Path, Path], conn: Any) -> None:
    from asyncua import Client, ua
    from asyncua.crypto import security_policies

    received: dict[tuple[int, int], float] = {}
    clients = []
    for number in range(count):
        client = Client(url)
        client.application_uri = BENCH_CLIENT_URI
        await client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(cert[0]), str(cert[1]),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
        client.set_user("bench")
        client.set_password(password)
        await client.connect()
        clients.append(client)
        idx = await client.get_namespace_index("urn:okcell:cell")
        subscription = await client.create_subscription(0, _Handler(number, received))
        await subscription.subscribe_events(
            client.get_node(ua.NodeId("Cell", idx)), client.get_node(ua.NodeId("ResultReadyEventType", idx)),
            queuesize=10000,
        )
    conn.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    for client in clients:
        await client.disconnect()
    conn.send(received)


class _Handler:
    def __init__(self, number: int, received: dict[tuple[int, int], float]) -> None:
        self._number, self._received = number, received

    def event_notification(self, event: Any) -> None:
        self._received[(self._number, event.ResultId)] = time.monotonic()
