"""Storage speed and memory, measured in one run against a real js-ipfs daemon.

    .venv/bin/python -m bench.storage [--size-mib 100]     # (or: make bench)

(as a module: run as a script, this file's name would shadow the `storage` package)

Rows compare our code with a baseline measured in the same run: CID computation vs
hashlib.sha256 over the same bytes, our add vs a raw HTTP /api/v0/add, our cat + verify
vs a raw cat, a cache hit vs a bare os.stat, and a seller's `modelmarket upload` of an
ONNX model of the same size (on a pseudo-terminal, to see its progress bar; listed on a
real anvil) vs a raw add of that file. Peak memory of add and cat + verify is measured
in child processes (peak RSS reset after start-up) at two sizes, to show it does not
grow with the file. Ends with one `goal:` line per goal of issues 3 and 12.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pty
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

from inference.demos import DEMO_DIR
from marketplace.bootstrap import model_checks
from marketplace.catalog.publish import CardText, checked_card
from marketplace.chain.transactions import connect
from marketplace.config import PROJECT_ROOT, Settings
from marketplace.devstack.anvil import dev_key, dev_signers, start_anvil
from storage import cid
from storage.cache import ModelCache
from storage.ipfs import IpfsStore
from tests.support.launchers import start_jsipfs
from tests.support.market import funded_market
from tests.support.paths import ANVIL_BIN

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


def forget(url: str, content: str) -> None:
    """Unpin `content` and collect garbage, so the next add of it is cold again."""
    requests.post(f"{url}/pin/rm", params={"arg": content}, timeout=60).raise_for_status()
    requests.post(f"{url}/repo/gc", timeout=600).raise_for_status()


def raw_cat(url: str, content: str) -> int:
    """The baseline: /api/v0/cat streamed and discarded."""
    size = 0
    with requests.post(f"{url}/cat", params={"arg": content}, stream=True, timeout=600) as r:
        r.raise_for_status()
        for piece in r.iter_content(MiB):
            size += len(piece)
    return size


# ------------------------------------------------------- upload (the CLI, as a seller)


def make_model(path: Path, size: int) -> None:
    """A MatMul ONNX model whose one weight (random, so incompressible) is `size` bytes."""
    side = int((size // 4) ** 0.5)
    weight = np.random.default_rng(3).standard_normal((side, side), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


PROGRESS = re.compile(rb"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) MB")


def cli_upload(env: dict[str, str], model: Path) -> tuple[float, bytes]:
    """`modelmarket upload MODEL` on a pseudo-terminal, as a seller sees it: its wall time
    (process start to exit) and everything it drew."""
    command = [sys.executable, "-m", "marketplace.cli", "upload", str(model)]
    leader, follower = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--name", "big", "--price", "0.001"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=PROJECT_ROOT,
    )
    os.close(follower)
    drawn = bytearray()
    while True:
        try:
            piece = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not piece:
            break
        drawn += piece
    code = proc.wait()
    elapsed = time.perf_counter() - start
    os.close(leader)
    if code != 0:
        raise RuntimeError(f"upload failed ({code}): {drawn[-2000:].decode(errors='replace')}")
    return elapsed, bytes(drawn)


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

        # 5. a seller's `modelmarket upload` of a model this size (check, store with
        # progress, list on a real anvil) beside a raw add of the same file.
        model = work / "big.onnx"
        make_model(model, size)
        with model.open("rb") as f:
            model_cid = cid.compute(f)
        anvil = start_anvil(ANVIL_BIN)
        try:
            settings = Settings(_env_file=None, data_dir=work / "data", rpc_url=anvil.rpc_url)  # type: ignore[call-arg]
            market = funded_market(connect(anvil.rpc_url), dev_signers(2))
            market.deployment.save(settings.deployment_path)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("MODELMARKET_")},
                "MODELMARKET_DATA_DIR": str(settings.data_dir),
                "MODELMARKET_RPC_URL": anvil.rpc_url,
                "MODELMARKET_IPFS_API": node.api,
                "MODELMARKET_CONFIRMATIONS": "0",
                "MODELMARKET_PRIVATE_KEY": dev_key(1),
                "COLUMNS": "100",
            }
            # What every upload pays whatever the size (start-up, imports, the trial
            # load's child, the card, the transaction): the smallest demo model.
            t_fixed, _ = cli_upload(env, DEMO_DIR / "iris-classifier.onnx")
            t_upload, drawn = cli_upload(env, model)
            data = model.read_bytes()
            start = time.perf_counter()
            checked_card(data, CardText("big"), model_checks(settings), max_card_bytes=1 << 16)
            t_check = time.perf_counter() - start
            del data
            # the upload added to a node without these blocks: so does the baseline
            raw_cold = []
            for _ in range(2):
                forget(node.url, model_cid)
                start = time.perf_counter()
                assert cid.same(raw_add(node.url, model), model_cid)
                raw_cold.append(time.perf_counter() - start)
            t_raw_model = min(raw_cold)
        finally:
            anvil.stop()
        stored_ok = model_cid.encode() in drawn
        frames = {m.group(1) for m in PROGRESS.finditer(drawn)}
        # the part of the upload that grows with the file, beside a raw add of it
        sized_ratio = (t_upload - t_fixed) / t_raw_model
        mib = model.stat().st_size / MiB
        rows += [
            (
                f"modelmarket upload {mib:.0f} MiB .onnx (end to end)",
                f"{t_upload * 1000:.0f} ms",
                f"raw /add, cold {t_raw_model * 1000:.0f} ms",
                f"{t_upload / t_raw_model:.2f}x time",
            ),
            (
                "  fixed part: upload of iris (1 KiB)",
                f"{t_fixed * 1000:.0f} ms",
                "(start-up, check, card, tx)",
                f"{t_fixed / t_upload:.0%} of upload",
            ),
            (
                f"  part that grows with size ({mib:.0f} MiB - iris)",
                f"{(t_upload - t_fixed) * 1000:.0f} ms",
                f"raw /add, cold {t_raw_model * 1000:.0f} ms",
                f"{sized_ratio:.2f}x time",
            ),
            (
                "  of which: inspect + trial load",
                f"{t_check * 1000:.0f} ms",
                "",
                f"{t_check / t_upload:.0%} of upload",
            ),
            (
                "  progress the seller saw",
                f"{len(frames)} updates",
                f"same CID as raw add: {'yes' if stored_ok else 'NO'}",
                "",
            ),
        ]

        # 6. memory: peak RSS above the process's own start, at two sizes.
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
    goal("upload_shows_progress_updates", str(len(frames)), ">= 5", len(frames) >= 5)
    # growing part: the store itself (<= 1.2x, above) plus the inspection and trial load,
    # which read the whole file too
    goal("upload_size_part_vs_raw_add_time", f"{sized_ratio:.2f}", "<= 3.0", sized_ratio <= 3.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
