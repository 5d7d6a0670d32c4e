"""The load probe: create a model's onnxruntime session once, in a child process bounded
in memory and time, and report what it cost. The indexer probes every listed model; the
gateway loads only models that passed.

Whatever makes a load costly (sparse tensors densified, constant folding, function
inlining, a mechanism not known yet), the child's address space is capped at its baseline
plus the budget and a margin (RLIMIT_AS), the parent kills it at the timeout, and its peak
resident memory is measured. onnxruntime swallows some allocation failures (a constant it
cannot fold is left unfolded), where the gateway, without the cap, would have made the
allocation: the child scans onnxruntime's log for them and counts them as over budget.

    python -m inference.probe MODEL_PATH MEMORY_BYTES RUNTIME_JSON   (the child)
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from inference.errors import (
    InferenceFailed,
    ModelLoadCrashed,
    ModelLoadFailed,
    ModelLoadTimeout,
    ModelLoadTooCostly,
)
from inference.runtime import RuntimeSettings

_READY = "ready"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_CHILD_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT"}
_STARTUP_S = 60.0  # Python and onnxruntime importing on a busy machine; not the model's time
# Address space beyond the budget: thread stacks and malloc arenas are reserved, not
# resident. The verdict uses measured resident memory against the budget itself.
_VM_MARGIN = 256 << 20
# What onnxruntime logs when it catches an allocation failure and carries on.
_ALLOCATION_FAILED = (b"bad_alloc", b"Failed to allocate", b"Available memory of")


@dataclass(frozen=True)
class LoadReport:
    """What creating the session cost: peak resident memory above the child's baseline,
    and wall time."""

    peak_bytes: int
    seconds: float


def probe_load(
    model: bytes | Path,
    memory_bytes: int,
    timeout: float,
    runtime: RuntimeSettings | None = None,
) -> LoadReport:
    """Load `model` (its bytes or a path) in a child process allowed `memory_bytes` above
    its baseline and `timeout` seconds. Raises ModelLoadTooCostly, ModelLoadTimeout,
    ModelLoadCrashed or ModelLoadFailed (all ModelLoadRefused) for the model, and
    InferenceFailed if the child could not start (not the model's fault). Inspect the
    model first: this loads it, it does not validate it."""
    runtime = runtime or RuntimeSettings()
    if isinstance(model, Path):
        return _probe_path(model.resolve(), memory_bytes, timeout, runtime)
    with tempfile.TemporaryDirectory(prefix="modelmarket-probe-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model)
        return _probe_path(path, memory_bytes, timeout, runtime)


def _probe_path(
    path: Path, memory_bytes: int, timeout: float, runtime: RuntimeSettings
) -> LoadReport:
    command = [sys.executable, "-m", "inference.probe", str(path), str(memory_bytes)]
    command.append(json.dumps(runtime.to_dict()))
    # The child loads an untrusted file: it gets no secret of ours (keys, database URL),
    # only what a Python process needs to start.
    env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV} | {"MALLOC_ARENA_MAX": "2"}
    # unbuffered: a buffered read could take the result line along with "ready" and
    # leave the selector waiting for bytes already read
    with subprocess.Popen(
        command,
        bufsize=0,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=_PACKAGE_ROOT,  # `-m inference.probe` finds this package first, whatever the cwd
    ) as child:
        try:
            return _converse(child, memory_bytes, timeout)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()


def _converse(child: subprocess.Popen[bytes], memory_bytes: int, timeout: float) -> LoadReport:
    assert child.stdout is not None
    if _read_line(child.stdout, _STARTUP_S) != _READY:
        raise InferenceFailed(f"the load probe did not start ({_exit_text(child)})")
    line = _read_line(child.stdout, timeout)
    if line is None:
        raise ModelLoadTimeout(f"loading the model took longer than {timeout:g} s")
    if not line:
        raise ModelLoadCrashed(
            f"the model's loader died ({_exit_text(child)}); a load that exhausts its"
            f" {memory_bytes}-byte budget can end this way"
        )
    return _verdict(json.loads(line), memory_bytes)


def _read_line(stream: IO[bytes], seconds: float) -> str | None:
    """The next line, "" at end of stream, None if none came within `seconds`."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(seconds):
            return None
    return stream.readline().decode("utf-8", "replace").strip()


def _exit_text(child: subprocess.Popen[bytes]) -> str:
    try:
        code = child.wait(5)
    except subprocess.TimeoutExpired:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _verdict(result: dict[str, Any], memory_bytes: int) -> LoadReport:
    if result.get("error") == "memory":
        raise ModelLoadTooCostly(
            f"loading the model needs more than its {memory_bytes}-byte budget: {result['message']}"
        )
    if result.get("error"):
        raise ModelLoadFailed(f"onnxruntime cannot load the model: {result['message']}")
    report = LoadReport(int(result["peak_bytes"]), float(result["seconds"]))
    if report.peak_bytes > memory_bytes:
        raise ModelLoadTooCostly(
            f"loading the model took {report.peak_bytes} bytes; the budget is {memory_bytes}"
        )
    return report


# The child


def _child(path: Path, memory_bytes: int, runtime: RuntimeSettings) -> dict[str, Any]:
    """Load once under the limits; a JSON-ready result."""
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)  # onnxruntime logs to fd 2; scanned after the load
        result = _load_once(path, memory_bytes, runtime)
        if "peak_bytes" in result and _mentions(log, _ALLOCATION_FAILED):
            return {"error": "memory", "message": "an allocation failed during load (logged)"}
        return result


def _load_once(path: Path, memory_bytes: int, runtime: RuntimeSettings) -> dict[str, Any]:
    import resource

    import onnxruntime as ort

    from inference import memory
    from inference import runtime as rt

    ort.set_default_logger_severity(2)  # warnings: where swallowed failures show
    rt.cap_process_memory(runtime.arena_max_bytes)
    data = path.read_bytes()
    limit = memory.status_bytes("VmSize") + memory_bytes + _VM_MARGIN
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(_READY, flush=True)
    before = memory.rss_bytes()
    memory.reset_peak()
    start = time.perf_counter()
    try:
        rt.create_session(data, runtime)
    except MemoryError as exc:
        return {"error": "memory", "message": type(exc).__name__}
    except Exception as exc:
        text = str(exc).strip()
        failed = any(m.decode() in text for m in _ALLOCATION_FAILED)
        return {"error": "memory" if failed else "failed", "message": _last_words(text)}
    seconds = time.perf_counter() - start
    return {"peak_bytes": max(0, memory.status_bytes("VmHWM") - before), "seconds": seconds}


def _last_words(text: str) -> str:
    """onnxruntime's message: its first line, the end of it (the start is a source path)."""
    return text.splitlines()[0][-300:] if text else "no message"


def _mentions(log: IO[bytes], markers: tuple[bytes, ...]) -> bool:
    """Whether any marker occurs in the file, read in chunks (it can be large)."""
    log.seek(0)
    tail = b""
    while chunk := log.read(1 << 20):
        block = tail + chunk
        if any(m in block for m in markers):
            return True
        tail = block[-64:]
    return False


def main(argv: list[str]) -> int:
    path, memory_bytes, settings = Path(argv[0]), int(argv[1]), json.loads(argv[2])
    result = _child(path, memory_bytes, RuntimeSettings(**settings))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no session teardown: the parent has its answer


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
