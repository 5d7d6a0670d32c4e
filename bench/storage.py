"""Storage speed and memory, measured in one run against a real js-ipfs daemon.

    .venv/bin/python -m bench.storage [--size-mib 100]     # (or: make bench)

(as a module: run as a script, this file's name would shadow the `storage` package)

Rows compare our code with a baseline measured in the same run: CID computation vs
hashlib.sha256 over the same bytes, our add vs a raw HTTP /api/v0/add, our cat + verify
vs a raw cat, a cache hit vs a bare os.stat. Peak memory of add and cat + verify is
measured in child processes (peak RSS reset after start-up) at two sizes, to show it
does not grow with the file. Ends with one `goal:` line per goal of issue 3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

from marketplace.config import PROJECT_ROOT
from storage import cid
from storage.cache import ModelCache
from storage.ipfs import IpfsStore
from tests.support.launchers import start_jsipfs

MiB = 1 << 20
JSIPFS = PROJECT_ROOT / "node_modules/.bin/jsipfs"


def make_file(path: Path, size: int, seed: int) -> None:
    """Incompressible bytes (sha256 in counter mode), written in 1 MiB pieces."""
    with path.open("wb") as out:
        counter = 0
        left = size
        while left:
            block = b"".join(
                hashlib.sha256(f"{seed}:{counter}:{i}".encode()).digest() for i in range(32768)
            )[: min(MiB, left)]
            out.write(block)
            left -= len(block)
            counter += 1


def best_of(n: int, fn: Callable[[], object]) -> float:
    """Fastest of `n` timed runs, in seconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def multipart(path: Path, boundary: str) -> Iterator[bytes]:
    """A streamed multipart body with one file part, as any HTTP client would send."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with path.open("rb") as src:
        while piece := src.read(MiB):
            yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def raw_add(url: str, path: Path) -> str:
    """The baseline: a plain streamed POST to /api/v0/add with Kubo's CIDv1 options."""
    boundary = uuid.uuid4().hex
    resp = requests.post(
        f"{url}/add",
        params={"cid-version": 1, "raw-leaves": "true", "cid-base": "base32", "pin": "true"},
        data=multipart(path, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    resp.raise_for_status()
    return str(resp.json()["Hash"])


def raw_cat(url: str, content: str) -> int:
    """The baseline: /api/v0/cat streamed and discarded."""
    size = 0
    with requests.post(f"{url}/cat", params={"arg": content}, stream=True, timeout=600) as r:
        r.raise_for_status()
        for piece in r.iter_content(MiB):
            size += len(piece)
    return size


# ------------------------------------------------------------- memory (child)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure_memory(op: str, api: str, path: str, content: str) -> None:
    """In a child: reset the peak RSS, run `op`, print the peak above the start in MB."""
    store = IpfsStore(api, timeout=600)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    if op == "add":
        with open(path, "rb") as src:
            store.add(src)
    elif op == "control":  # what a buffered read costs: proves the measure sees memory
        Path(path).read_bytes()
    else:
        cid.verify(store.cat(content), content)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"overhead_mb": (peak - base) / 1024}))


def child_memory(op: str, api: str, path: Path, content: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--memory", op, api, str(path), content],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
        cwd=PROJECT_ROOT,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["overhead_mb"])


# --------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--memory", nargs=4, help=argparse.SUPPRESS)
    warnings.filterwarnings("ignore", "The 'strict' parameter", FutureWarning)
    args = parser.parse_args()
    if args.memory:
        measure_memory(*args.memory)
        return 0

    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    big, small = work / "big.bin", work / "small.bin"
    make_file(big, size, seed=1)
    make_file(small, size // 4, seed=2)
    node = start_jsipfs(JSIPFS, work / "repo")
    rows: list[tuple[str, str, str, str]] = []
    try:
        store = IpfsStore(node.api, timeout=600)

        # 1. CID vs sha256 over the same bytes, from the page cache.
        def sha() -> None:
            h = hashlib.sha256()
            with big.open("rb") as f:
                while piece := f.read(MiB):
                    h.update(piece)

        def our_cid() -> None:
            with big.open("rb") as f:
                cid.compute(f)

        t_sha, t_cid = best_of(3, sha), best_of(3, our_cid)
        cid_ratio = t_sha / t_cid  # throughput ratio: ours / sha256
        rows.append(
            (
                "CID of the file (ours)",
                f"{t_cid * 1000:.0f} ms",
                f"sha256 {t_sha * 1000:.0f} ms",
                f"{cid_ratio:.2f}x throughput",
            )
        )

        # 2. add: raw HTTP vs ours (same bytes; alternate so neither is always second).
        raw_times, our_times = [], []
        expected = ""
        for _ in range(2):
            start = time.perf_counter()
            expected = raw_add(node.url, big)
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with big.open("rb") as f:
                ours = store.add(f)
            our_times.append(time.perf_counter() - start)
        assert cid.same(ours, expected)
        t_raw_add, t_add = min(raw_times), min(our_times)
        add_ratio = t_add / t_raw_add
        rows.append(
            (
                "add (ours: hash + check)",
                f"{t_add * 1000:.0f} ms",
                f"raw /add {t_raw_add * 1000:.0f} ms",
                f"{add_ratio:.2f}x time",
            )
        )

        # 3. cat + verify vs raw cat.
        t_raw_cat = best_of(2, lambda: raw_cat(node.url, ours))
        t_cat = best_of(2, lambda: cid.verify(store.cat(ours), ours))
        rows.append(
            (
                "cat + verify (ours)",
                f"{t_cat * 1000:.0f} ms",
                f"raw /cat {t_raw_cat * 1000:.0f} ms",
                f"{t_cat / t_raw_cat:.2f}x time",
            )
        )

        # 4. the cache: a cold fetch, then hits.
        cache = ModelCache(work / "cache", store, 4 * size)
        start = time.perf_counter()
        path = cache.get(ours)
        t_cold = time.perf_counter() - start
        rows.append(
            (
                "cache miss (cat, verify, write, rename)",
                f"{t_cold * 1000:.0f} ms",
                f"raw /cat {t_raw_cat * 1000:.0f} ms",
                f"{t_cold / t_raw_cat:.2f}x time",
            )
        )
        hits, stats = [], []
        for _ in range(2000):
            start = time.perf_counter()
            cache.get(ours)
            hits.append(time.perf_counter() - start)
            start = time.perf_counter()
            os.stat(path)
            stats.append(time.perf_counter() - start)
        hit_us, stat_us = statistics.median(hits) * 1e6, statistics.median(stats) * 1e6
        rows.append(
            (
                "cache hit (median)",
                f"{hit_us:.1f} us",
                f"os.stat {stat_us:.1f} us",
                f"{hit_us / stat_us:.1f}x time",
            )
        )

        # 5. memory: peak RSS above the process's own start, at two sizes.
        small_cid = store.add(small.open("rb"))
        mem = {}
        for op in ("add", "cat"):
            for label, file, content in (("1/4", small, small_cid), ("full", big, ours)):
                mem[(op, label)] = child_memory(op, node.api, file, content)
        control = child_memory("control", node.api, big, ours)
        rows.append(
            (
                f"peak memory, control: read_bytes() {args.size_mib} MiB",
                f"{control:.1f} MB",
                "(shows the measure sees memory)",
                "",
            )
        )
        for op in ("add", "cat"):
            rows.append(
                (
                    f"peak memory, {op} {args.size_mib} MiB",
                    f"{mem[(op, 'full')]:.1f} MB",
                    f"{args.size_mib // 4} MiB: {mem[(op, '1/4')]:.1f} MB",
                    f"{mem[(op, 'full')] - mem[(op, '1/4')]:+.1f} MB growth",
                )
            )
    finally:
        node.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("measure", "ours", "baseline (same run)", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    print(f"storage benchmark, {args.size_mib} MiB file, js-ipfs 0.66.1 on loopback")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print()
    peak = max(mem.values())
    growth = max(mem[(op, "full")] - mem[(op, "1/4")] for op in ("add", "cat"))

    def goal(name: str, value: str, target: str, ok: bool) -> None:
        print(f"goal: {name} = {value} (target {target}) {'met' if ok else 'missed'}")

    goal("cid_vs_sha256_throughput", f"{cid_ratio:.2f}", ">= 0.8", cid_ratio >= 0.8)
    goal("add_vs_raw_add_time", f"{add_ratio:.2f}", "<= 1.2", add_ratio <= 1.2)
    goal("peak_memory_add_cat_mb", f"{peak:.1f}", "< 64", peak < 64)
    goal("memory_growth_4x_file_mb", f"{growth:.1f}", "< 16", growth < 16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
