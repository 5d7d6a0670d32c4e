"""What every gateway benchmark reads: wrk's requests/s and latency for a POST, and the
CPU a process tree used, from /proc."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from marketplace.devstack.serve import Server


def wrk(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: int, work: Path
) -> tuple[float, float, float, int, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx, requests) from wrk with a POST script."""
    (work / "body.bin").write_bytes(body)
    lines = [
        "wrk.method = 'POST'",
        f"local f = io.open('{work / 'body.bin'}', 'rb'); wrk.body = f:read('*a'); f:close()",
    ]
    lines += [f"wrk.headers['{k}'] = '{v}'" for k, v in headers.items()]
    (work / "post.lua").write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(connections, 2)),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(work / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, pct("50"), pct("99"), int(bad.group(1)) if bad else 0, total


Cell = tuple[float, float, float, int, float, float]  # rps, p50, p99, non-2xx, cpu/db us a call


def tree_cpu(pid: int | None) -> float:
    """CPU seconds used so far by process `pid` and every descendant (from /proc),
    with those that ended: a parent's cutime/cstime holds its reaped children's (a
    PostgreSQL backend that exits mid-cell no longer takes its CPU out of the sum)."""
    if pid is None:
        return 0.0
    total, stack = 0, [pid]
    while stack:
        proc = Path(f"/proc/{stack.pop()}")
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            threads = list((proc / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue  # a process that ended meanwhile
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        for thread in threads:  # one that ended meanwhile hides no other's children
            try:
                stack += [int(c) for c in (thread / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / os.sysconf("SC_CLK_TCK")


def measure(
    server: Server, url: str, request: tuple[bytes, dict[str, str]], conns: int, seconds: int,
    work: Path, db_pid: int | None,
) -> Cell:  # fmt: skip
    """One wrk run, with the CPU the server (all its processes) and the database used
    per request meanwhile."""
    cpu, db = tree_cpu(server.process.pid), tree_cpu(db_pid)
    rps, p50, p99, bad, total = wrk(url, request[0], request[1], conns, seconds, work)
    per = 1e6 / max(total, 1)
    return (
        rps, p50, p99, bad,
        (tree_cpu(server.process.pid) - cpu) * per, (tree_cpu(db_pid) - db) * per,
    )  # fmt: skip
