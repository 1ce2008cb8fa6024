"""Client transport benchmark: requests/s and p50/p99 latency at 1, 64, 1024 and 4096 concurrent requests.

Runs a loopback echo server (uvicorn + uvloop + httptools, one process, started here on a free port and
stopped at the end) and drives it with each client in the same run: httpx with its own pool (httpx's
default 100 connections, and 1024), httpx over the `httpx-aiohttp` transport, our `ServiceClient` (aiohttp
pool, httpx.Response out) and raw aiohttp as the floor. Each (client, concurrency) cell runs in its own
process, stops measuring after CELL_SECONDS and is killed if it overruns, so the whole run is bounded.

    .venv/bin/python benchmarks/client.py            # full table (about 5 minutes on 2 cores)
    .venv/bin/python benchmarks/client.py --quick    # smaller counts, for a smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402
from httpx_aiohttp import AiohttpTransport  # noqa: E402

from gym_core.client import ServiceClient, connection_budget  # noqa: E402
from gym_core.server import bind_socket  # noqa: E402

# A typical small call body (a tool call's arguments plus a session header), echoed back.
PAYLOAD = {"city": "Paris", "units": "metric", "history": list(range(40))}
HEADERS = {"X-Session-Id": "0" * 32}
CELL_SECONDS = 20.0

Post = Callable[[], Awaitable[None]]
MakeClient = Callable[[str], Post]


async def echo_app(scope: dict, receive: Callable, send: Callable) -> None:
    """The loopback server: echo the request body as JSON, nothing else (the client is what we measure)."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(fd: int) -> None:
    """Child process: serve `echo_app` on the inherited listening socket."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(
        echo_app, loop="uvloop", http="httptools", lifespan="off", log_level="warning",
        access_log=False, timeout_keep_alive=30, backlog=8192,
    )
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def start_server() -> tuple[subprocess.Popen, str]:
    """Start the echo server in a child process on a free loopback port; return it and its URL once it answers."""
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    child = subprocess.Popen([sys.executable, __file__, "--serve-fd", str(sock.fileno())], pass_fds=[sock.fileno()])
    sock.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1) as probe:
                probe.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
                if probe.recv(64).startswith(b"HTTP/1.1 200"):
                    return child, url
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise RuntimeError("the echo server did not come up within 30 s")


@dataclass
class Cell:
    client: str
    concurrency: int
    done: int
    errors: int
    seconds: float
    cpu_seconds: float
    latencies: list[float]
    cut: bool

    def row(self) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        p50, p99 = lat[len(lat) // 2] * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
        rps = f"{self.done / self.seconds:,.0f}" + (f" (cut at {CELL_SECONDS:.0f} s)" if self.cut else "")
        cpu = self.cpu_seconds / max(self.done, 1) * 1e6
        return (
            f"| {self.concurrency} | {self.client} | {self.done} | {rps} | {p50:.1f} | {p99:.1f} "
            f"| {cpu:,.0f} | {self.errors} |"
        )


async def run_cell(name: str, post: Post, concurrency: int, total: int) -> Cell:
    """Send `total` requests with `concurrency` in flight; stop measuring at CELL_SECONDS."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                await post()
                latencies.append(time.perf_counter() - start)
            except Exception:
                errors += 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    start, cpu_start = time.perf_counter(), time.process_time()
    _, pending = await asyncio.wait(tasks, timeout=CELL_SECONDS)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # Cut tasks are not cancelled: cancelling thousands of requests queued in httpx's pool takes minutes,
    # and the cell's process exits right after reporting.
    return Cell(name, concurrency, len(latencies), errors, seconds, cpu_seconds, latencies, cut=bool(pending))


def service_client(url: str) -> Post:
    client = ServiceClient()

    async def post() -> None:
        response = await client.post(url, "/echo", PAYLOAD, headers=HEADERS)
        response.raise_for_status()

    return post


def plain_httpx(transport: Callable[[], httpx.AsyncBaseTransport] | None = None, pool: int = 100) -> MakeClient:
    def make(url: str) -> Post:
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        client = httpx.AsyncClient(transport=transport() if transport else None, limits=limits, timeout=60)
        body, headers = orjson.dumps(PAYLOAD), {"content-type": "application/json", **HEADERS}

        async def post() -> None:
            response = await client.post(url + "/echo", content=body, headers=headers)
            response.raise_for_status()

        return post

    return make


def raw_aiohttp(url: str) -> Post:
    connector = aiohttp.TCPConnector(limit=connection_budget(), limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    body, headers = orjson.dumps(PAYLOAD), {"content-type": "application/json", **HEADERS}

    async def post() -> None:
        async with session.post(url + "/echo", data=body, headers=headers) as response:
            response.raise_for_status()
            await response.read()

    return post


_BIG = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
CLIENTS: dict[str, MakeClient] = {
    "httpx, default transport (pool 100 = httpx default)": plain_httpx(),
    "httpx, default transport (pool 1024)": plain_httpx(pool=1024),
    "httpx over httpx-aiohttp AiohttpTransport (pool 1024)": plain_httpx(lambda: AiohttpTransport(limits=_BIG)),
    "ServiceClient (aiohttp pool, httpx.Response out)": service_client,
    "raw aiohttp (reference, same pool size as ServiceClient)": raw_aiohttp,
}


async def one_cell(client: int, concurrency: int, total: int, url: str) -> None:
    """Cell process: a fresh client (cold pool), warmed with a few calls, then measured; prints its row."""
    name, make = list(CLIENTS.items())[client]
    post = make(url)
    await run_cell(name, post, min(concurrency, 64), min(total, 256))
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()  # at most 64 warm-up calls left: cheap to cancel, and they must not run into the cell
    await asyncio.sleep(0.1)
    print((await run_cell(name, post, concurrency, total)).row(), flush=True)


def run_cell_process(client: int, concurrency: int, total: int, url: str) -> str:
    """One cell in its own process, killed if it overruns: no cell can stall the run or leak into the next."""
    command = [sys.executable, __file__, "--cell", str(client), str(concurrency), str(total), url]
    limit = 2 * CELL_SECONDS + 30
    name = list(CLIENTS)[client]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return f"| {concurrency} | {name} | - | did not finish in {limit:.0f} s | - | - | - | - |"
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return f"| {concurrency} | {name} | - | failed: {done.stderr.strip()[-200:]} | - | - | - | - |"
    return lines[-1]


def main(quick: bool) -> None:
    """Start the server, run every cell, print the markdown table, stop the server."""
    child, url = start_server()
    counts = {1: 500, 64: 2000, 1024: 4096, 4096: 8192} if quick else {1: 2000, 64: 10000, 1024: 16384, 4096: 32768}
    print(machine())
    print("| concurrent | client | requests done | req/s | p50 ms | p99 ms | client CPU µs/req | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    try:
        # Levels outer, clients inner: on a shared machine, load drifts over minutes, not within one level.
        for concurrency, total in counts.items():
            for client in range(len(CLIENTS)):
                print(run_cell_process(client, concurrency, total, url), flush=True)
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def machine() -> str:
    """One line describing where the numbers come from."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("httpx", "httpx-aiohttp", "aiohttp", "uvicorn"))
    return f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {versions}; client on uvloop."


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller request counts")
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cell", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fd is not None:
        serve(args.serve_fd)
    elif args.cell:
        client_index, concurrency, total, url = args.cell
        uvloop.run(one_cell(int(client_index), int(concurrency), int(total), url))
        os._exit(0)  # skip tearing down what a cut cell left in flight
    else:
        main(args.quick)
