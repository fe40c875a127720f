"""In-process ONNX Runtime: one session per (model, version), created on first use."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnxruntime as ort

from matserve.registry import ModelVersion

logger = logging.getLogger("matserve.runtime")


def providers() -> list[str]:
    """CUDA first when onnxruntime-gpu and a GPU are present, CPU always as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntime:
    """Run registry models with ONNX Runtime in this process.

    Each version gets two sessions: a single-threaded one for small batches, where waking
    a thread pool for every one of the graph's ~100 small ops costs more than the math,
    and a multi-threaded one for large batches. Spin-waiting is disabled in both so that
    idle threads do not steal cores from the HTTP server or other processes.

    Parameters
    ----------
    intra_op_threads : int
        Threads of the large-batch session (0: ONNX Runtime's default, one per core).
    small_batch : int
        Batches of at most this many rows run on the single-threaded session.
    """

    name = "onnxruntime"

    def __init__(self, intra_op_threads: int = 0, small_batch: int = 16) -> None:
        self.intra_op_threads = intra_op_threads
        self.small_batch = small_batch
        self._sessions: dict[tuple[str, str, int], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def load(self, model: ModelVersion, threads: int | None = None) -> ort.InferenceSession:
        """Create (once) and return a session for a verified model version (both sessions when ``threads`` is None)."""
        if threads is None:
            self.load(model, 1)
            return self.load(model, self.intra_op_threads)
        key = (model.name, model.version, threads)
        with self._lock:
            if key not in self._sessions:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(str(model.file("model.onnx")), options, providers=providers())
                logger.info(
                    "loaded %s/%s on %s (%s threads)",
                    model.name,
                    model.version,
                    session.get_providers()[0],
                    threads or "all",
                )
                self._sessions[key] = session
            return self._sessions[key]

    def run(self, model: ModelVersion, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output by name."""
        rows = len(next(iter(inputs.values())))
        session = self.load(model, 1 if rows <= self.small_batch else self.intra_op_threads)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))
