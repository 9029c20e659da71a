#!/usr/bin/env python3
"""Load the HTTP API of one `duplex run` on the lab (scripts/lab.sh): loopback only.

    scripts/bench-http.py

It creates the databases duplex_benchh on both lab clusters (empty: the daemon reports
DEGRADED and /health/sync answers 503, which counts as an answer here), starts
`duplex run` beside main on 127.0.0.1:18803 with a random 64-character admin token,
and measures:
  idle    PROBES requests for /health/sync, one after another, each on a new connection;
  slow    the same while SLOW connections are held open that sent a request line and one
          header and then nothing (a probe that gets no answer within 2 s, or whose
          connection is reset, is counted as unanswered);
  burst   BURST concurrent GET /api/sync/status with the right token: status codes and
          latency percentiles.
It stops the daemon with SIGTERM and drops the databases (also those of a crashed
earlier run, at the start).

Environment:
  DUPLEX_BIN (target/release/duplex, built first unless SKIP_BUILD=1)
  NOFILE      soft limit on open files for the daemon (default: as inherited); e.g.
              1024 to reproduce a host with the common default
  SLOW (1000)  BURST (1000)  PROBES (50)
  MAIN_DB_URL, CLOUD_DB_URL, PG_BIN  the lab's; from `scripts/lab.sh env` when not set
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NAME = "bench-http"
ROOT = Path(__file__).resolve().parent.parent
DB = "duplex_benchh"
ADDR = ("127.0.0.1", 18803)
PARTIAL_HEAD = b"GET /health/sync HTTP/1.1\r\nHost: slow\r\n"
# A health probe not answered within this is counted as unanswered.
PROBE_TIMEOUT = 2.0


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


def whole(var: str, default: int) -> int:
    raw = os.environ.get(var, str(default))
    if not raw.isdigit():
        sys.exit(f"{NAME}: {var} must be a whole number (got '{raw}')")
    return int(raw)


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    if "MAIN_DB_URL" not in env or "CLOUD_DB_URL" not in env:
        out = subprocess.run([str(ROOT / "scripts" / "lab.sh"), "env"], check=True,
                             capture_output=True, text=True).stdout
        for m in re.finditer(r"^export (\w+)='([^']*)'", out, re.M):
            env.setdefault(m.group(1), m.group(2))
    return env


def with_db(url: str, db: str) -> str:
    return re.sub(r"^([a-z]+://[^/]*)/[^?]*", rf"\g<1>/{db}", url)


def psql(env: dict[str, str], url: str, sql: str) -> None:
    exe = shutil.which("psql", path=env.get("PG_BIN", "") + os.pathsep + env.get("PATH", ""))
    if not exe:
        sys.exit(f"{NAME}: psql not found: set PG_BIN (scripts/lab.sh env exports it)")
    subprocess.run([exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", with_db(url, "postgres"),
                    "-c", sql], check=True, stdout=subprocess.DEVNULL,
                   env={**env, "PGOPTIONS": "--client-min-messages=warning"})


def request(path: str, token: str | None = None, timeout: float = 10.0) -> int:
    """One request on a new connection: the status code, 0 when no answer."""
    head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    try:
        with socket.create_connection(ADDR, timeout=timeout) as s:
            s.sendall((head + "\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return 0


def probes(n: int) -> tuple[list[float], dict[int, int]]:
    times, codes = [], {}
    for _ in range(n):
        start = time.monotonic()
        code = request("/health/sync", timeout=PROBE_TIMEOUT)
        times.append((time.monotonic() - start) * 1000)
        codes[code] = codes.get(code, 0) + 1
    return sorted(times), codes


def pct(sorted_ms: list[float], p: float) -> float:
    i = max(1, min(len(sorted_ms), int(-(-len(sorted_ms) * p // 1)))) - 1
    return sorted_ms[i]


def summary(what: str, times: list[float], codes: dict[int, int]) -> None:
    shown = ", ".join(f"{c or 'no answer'}: {n}" for c, n in sorted(codes.items()))
    print(f"{what}: {shown}; p50 {pct(times, .5):.2f} ms, p95 {pct(times, .95):.2f} ms, "
          f"max {times[-1]:.2f} ms", flush=True)


async def burst(n: int, token: str) -> tuple[list[float], dict[int, int], float]:
    async def one() -> tuple[int, float]:
        start = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(*ADDR), 30)
            w.write((f"GET /api/sync/status HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer "
                     f"{token}\r\nConnection: close\r\n\r\n").encode())
            data = await asyncio.wait_for(r.read(), 30)
            w.close()
            code = int(data.split(b" ", 2)[1])
        except (OSError, IndexError, ValueError, asyncio.TimeoutError):
            code = 0
        return code, (time.monotonic() - start) * 1000

    start = time.monotonic()
    results = await asyncio.gather(*[one() for _ in range(n)])
    wall = (time.monotonic() - start) * 1000
    codes: dict[int, int] = {}
    for c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    return sorted(t for _, t in results), codes, wall


def main() -> None:
    slow_n, burst_n, probe_n = whole("SLOW", 1000), whole("BURST", 1000), whole("PROBES", 50)
    env = lab_env()
    binary = Path(os.environ.get("DUPLEX_BIN", ROOT / "target" / "release" / "duplex"))
    if "DUPLEX_BIN" not in os.environ and os.environ.get("SKIP_BUILD") != "1":
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    # This process holds SLOW connections itself.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for url in (env["MAIN_DB_URL"], env["CLOUD_DB_URL"]):
        psql(env, url, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        psql(env, url, f"CREATE DATABASE {DB}")
    token = secrets.token_hex(32)
    denv = {k: v for k, v in env.items() if not k.startswith("DUPLEX_")}
    denv.update(INSTANCE_ROLE="main", LOCAL_DB_URL=with_db(env["MAIN_DB_URL"], DB),
                REMOTE_DB_URL=with_db(env["CLOUD_DB_URL"], DB),
                REPLICATION_SLOT_NAME=f"{DB}_c2m", DUPLEX_HTTP_ADDR=f"{ADDR[0]}:{ADDR[1]}",
                DUPLEX_ADMIN_TOKEN=token, DUPLEX_LOG="warn")
    nofile = os.environ.get("NOFILE")

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))

    daemon = subprocess.Popen([str(binary), "run"], env=denv, preexec_fn=limit,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    slow: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while request("/health/sync", timeout=1) == 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{NAME}: duplex run did not answer (exit {daemon.poll()})")
            time.sleep(0.1)
        print(f"binary {binary}; daemon soft open-files limit {nofile or soft}", flush=True)
        summary(f"idle, {probe_n} x /health/sync", *probes(probe_n))
        start = time.monotonic()
        refused = 0
        for _ in range(slow_n):
            try:
                s = socket.create_connection(ADDR, timeout=5)
                s.sendall(PARTIAL_HEAD)
                slow.append(s)
            except OSError:
                refused += 1
        print(f"{len(slow)} slow connections opened in {(time.monotonic() - start) * 1000:.0f} ms"
              f" ({refused} failed)", flush=True)
        summary(f"with them held open, {probe_n} x /health/sync", *probes(probe_n))
        for s in slow:
            s.close()
        slow.clear()
        time.sleep(1)
        times, codes, wall = asyncio.run(burst(burst_n, token))
        summary(f"burst of {burst_n} concurrent /api/sync/status in {wall:.0f} ms", times, codes)
    finally:
        for s in slow:
            s.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        for url in (env["MAIN_DB_URL"], env["CLOUD_DB_URL"]):
            psql(env, url, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
