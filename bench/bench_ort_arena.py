"""ONNX Runtime with and without its CPU memory arena, side by side in one process (``make bench-ort-arena``).

The server runs every session with ``enable_cpu_mem_arena = False`` so that a request's working memory is given
back when it ends (with the arena, the first large EBSD scan kept ~250 MiB for the life of the process). This
measures what that costs: runs per second of each committed active graph at batch 1 and 256, arena off / on,
in five alternating pairs of 1 s windows (a warm-up pair first), reporting the median of the five off/on ratios
so that drifting machine load hits both alike.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from matserve.registry import Registry
from matserve.settings import Settings


def session(path: str, arena: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def runs_per_second(graph: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float = 1.0) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        graph.run(None, feeds)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    registry = Registry(Settings().models_dir)
    print("model                version  batch  arena on /s  arena off /s  off/on")
    for name in registry.names():
        version = registry.get(name)
        path = str(version.file("model.onnx"))
        on, off = session(path, True), session(path, False)
        rng = np.random.default_rng(0)
        for batch in (1, 256):
            feeds = {}
            for node in on.get_inputs():
                shape = [batch, *(d if isinstance(d, int) else 1 for d in node.shape[1:])]
                feeds[node.name] = rng.random(shape, dtype=np.float32)
            runs_per_second(on, feeds), runs_per_second(off, feeds)  # warm-up
            pairs = [(runs_per_second(on, feeds), runs_per_second(off, feeds)) for _ in range(5)]
            ratio = float(np.median([b / a for a, b in pairs]))
            rate_on, rate_off = (float(np.median(r)) for r in zip(*pairs, strict=True))
            print(f"{name:20s} {version.version:8s} {batch:5d} {rate_on:12.1f} {rate_off:13.1f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
