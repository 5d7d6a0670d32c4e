"""How an onnxruntime session is made: the settings, the process-wide capped arena and the
session options. Shared by the session cache and the load probe's child process, so the
probe measures exactly what the gateway will do; imports onnxruntime only (no onnx), so
the probe's child starts fast."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

import onnxruntime as ort

_arena_lock = threading.Lock()
_arena_bytes: int | None = None


@dataclass(frozen=True)
class RuntimeSettings:
    """How sessions load and run; the gateway fills these from its Settings."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    time_limit_s: float = 10.0
    arena_max_bytes: int = 4 << 30
    # Largest tensor constant folding may create at load. onnxruntime's own default is
    # 1 GiB (a 157-byte ConstantOfShape -> Neg model then loads into 3 GB); without folding
    # MiniLM int8 runs 4x slower: it needs its ~47 MB dequantized embedding folded.
    fold_max_bytes: int = 256 << 20
    # Give a run's arena growth back to the OS: always after a failed or stopped run, and
    # after a successful one that left resident memory this far above its level at load.
    release_memory: bool = True
    release_above_bytes: int = 256 << 20

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (passed to the probe's child)."""
        return asdict(self)


def cap_process_memory(max_bytes: int) -> None:
    """Register one CPU arena capped at `max_bytes` for the whole process (sessions opt in
    with `session.use_env_allocators`). The first call wins: onnxruntime allows one."""
    global _arena_bytes
    with _arena_lock:
        if _arena_bytes is not None:
            return
        cfg = ort.OrtArenaCfg(
            {"max_mem": max_bytes, "arena_extend_strategy": 1, "initial_chunk_size_bytes": 1 << 20}
        )
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, cfg)
        _arena_bytes = max_bytes


def session_options(runtime: RuntimeSettings) -> ort.SessionOptions:
    """Options every session of ours is created with."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.intra_op_threads
    options.inter_op_num_threads = runtime.inter_op_threads
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.add_session_config_entry(
        "optimization.constant_folding_max_output_size_in_bytes", str(runtime.fold_max_bytes)
    )
    return options


def create_session(data: bytes, runtime: RuntimeSettings) -> ort.InferenceSession:
    """A CPU session for the model `data` (onnxruntime's exception on failure)."""
    return ort.InferenceSession(data, session_options(runtime), providers=["CPUExecutionProvider"])
