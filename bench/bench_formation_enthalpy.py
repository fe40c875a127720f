"""Benchmark the formation enthalpy predictor, everything side by side in one run.

* Hardware ceiling: numpy float32 2048x2048 matmul GFLOPS.
* In-process: predictions/s at batch 1, 64 and 4096, tensor path (ONNX Runtime only) and
  end to end (codec + ONNX Runtime); achieved GFLOPS from the graph's FLOPs per sample,
  as a fraction of the matmul ceiling measured in the same rounds.
* HTTP: batch-1 latency p50/p99 and batch-1000 throughput against a real ``matserve serve``
  subprocess with the prediction cache off, next to the same calls in-process; one row, labelled
  "cache hit", repeats batch 1000 against a server with the cache on.

Machine load drifts, so ceiling and model are measured in interleaved rounds and the
ratios use the same rounds. Run: ``make bench`` (writes ``bench/results/formation_enthalpy.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx

from matserve.devserver import running_server
from matserve.models.formation_enthalpy import FormationEnthalpyModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "formation_enthalpy.json"
NO_CACHE_ENV = {"MATSERVE_CACHE": "0", "MATSERVE_RATE_LIMIT_PER_MINUTE": "0"}
"""HTTP rows run the model on every request (the prediction cache is off)."""
CACHE_ENV = {"MATSERVE_CACHE": "1", "MATSERVE_RATE_LIMIT_PER_MINUTE": "0"}
"""Only for the row labelled "cache hit"."""
FORMULAS = ["NaCl", "Fe2O3", "Ca(OH)2", "La0.7Sr0.3MnO3", "H2O", "Al2O3", "TiO2", "LiFePO4", "MgAl2O4", "CuZn"]


def graph_flops_per_sample(path: Path) -> float:
    """2 * multiply-adds of every Gemm/MatMul in the graph, per input row."""
    model = onnx.load(str(path))
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    flops = 0.0
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul") and node.input[1] in shapes:
            k, n = shapes[node.input[1]][:2]
            flops += 2.0 * k * n
    return flops


def best_rate(work: Callable[[], None], items: int, seconds: float) -> float:
    """Items per second over repeated calls for about ``seconds`` (median of per-call rates)."""
    work()  # warm-up
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        started = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def matmul_gflops(seconds: float) -> float:
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    b = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
    return best_rate(lambda: a @ b, 1, seconds) * 2 * 2048**3 / 1e9


def latencies_ms(call: Callable[[], object], n: int) -> list[float]:
    call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of ceiling vs model")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--http-requests", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings()
    registry = Registry(settings.models_dir)
    runtime = OnnxRuntime(intra_op_threads=settings.ort_threads)
    model = FormationEnthalpyModel(registry, runtime)
    version = model.load()
    flops = graph_flops_per_sample(version.file("model.onnx"))
    rng = np.random.default_rng(0)

    def tensor_batch(n: int) -> Callable[[], None]:
        x = np.zeros((n, 86), np.float32)
        for row in x:
            picked = rng.choice(86, size=3, replace=False)
            row[picked] = rng.dirichlet(np.ones(3))
        return lambda: runtime.run(version, {"element_fractions": x})

    def formula_batch(n: int) -> Callable[[], None]:
        formulas = [FORMULAS[i % len(FORMULAS)] for i in range(n)]
        return lambda: model(formulas)

    batches = (1, 64, 4096)
    rounds: list[dict] = []
    for _ in range(args.rounds):
        row = {"matmul_gflops": matmul_gflops(args.seconds)}
        for n in batches:
            row[f"tensor_b{n}_per_s"] = best_rate(tensor_batch(n), n, args.seconds)
            row[f"formulas_b{n}_per_s"] = best_rate(formula_batch(n), n, args.seconds)
        row["tensor_b4096_gflops"] = row["tensor_b4096_per_s"] * flops / 1e9
        row["fraction_of_ceiling_b4096"] = row["tensor_b4096_gflops"] / row["matmul_gflops"]
        rounds.append(row)
    in_process = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    single = formula_batch(1)
    thousand = formula_batch(1000)
    one = {"formulas": ["Fe2O3"]}
    big = {"formulas": [FORMULAS[i % len(FORMULAS)] for i in range(1000)]}
    with tempfile.TemporaryDirectory() as tmp, running_server(settings.models_dir, Path(tmp) / "server.log",
                                                              NO_CACHE_ENV) as url:  # fmt: skip
        with httpx.Client(base_url=url, timeout=30) as client:
            http_b1 = latencies_ms(lambda: client.post("/v1/formation-enthalpy", json=one).raise_for_status(),
                                   args.http_requests)  # fmt: skip
            local_b1 = latencies_ms(single, args.http_requests)
            http_b1000 = latencies_ms(lambda: client.post("/v1/formation-enthalpy", json=big).raise_for_status(), 20)
            local_b1000 = latencies_ms(thousand, 20)
    with tempfile.TemporaryDirectory() as tmp, running_server(settings.models_dir, Path(tmp) / "server.log",
                                                              CACHE_ENV) as url:  # fmt: skip
        with httpx.Client(base_url=url, timeout=30) as client:
            client.post("/v1/formation-enthalpy", json=big).raise_for_status()  # fill the cache
            cached_b1000 = latencies_ms(lambda: client.post("/v1/formation-enthalpy", json=big).raise_for_status(), 20)
    http = {
        "cache": "off, except the row named cache hit",
        "http_b1_p50_ms": percentile(http_b1, 50),
        "http_b1_p99_ms": percentile(http_b1, 99),
        "inprocess_b1_p50_ms": percentile(local_b1, 50),
        "inprocess_b1_p99_ms": percentile(local_b1, 99),
        "http_b1000_formulas_per_s": 1000 / (percentile(http_b1000, 50) / 1e3),
        "inprocess_b1000_formulas_per_s": 1000 / (percentile(local_b1000, 50) / 1e3),
        "http_b1000_cache_hit_formulas_per_s": 1000 / (percentile(cached_b1000, 50) / 1e3),
    }
    http["http_b1000_vs_inprocess"] = http["http_b1000_formulas_per_s"] / http["inprocess_b1000_formulas_per_s"]

    report = {
        "model": version.name,
        "version": version.version,
        "flops_per_prediction": flops,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "ort_threads": settings.ort_threads,
        "in_process": in_process,
        "rounds": rounds,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(
        f"formation_enthalpy {version.version}: {flops / 1e6:.2f} MFLOP per prediction; medians of {args.rounds} rounds"
    )
    print(f"{'measurement':<44} {'value':>12}")
    print(f"{'numpy float32 matmul (ceiling), GFLOPS':<44} {in_process['matmul_gflops']:12.1f}")
    for n in batches:
        print(f"{f'ONNX Runtime tensors, batch {n}, pred/s':<44} {in_process[f'tensor_b{n}_per_s']:12.0f}")
        print(f"{f'codec + ONNX Runtime, batch {n}, formulas/s':<44} {in_process[f'formulas_b{n}_per_s']:12.0f}")
    print(f"{'batch 4096 achieved GFLOPS':<44} {in_process['tensor_b4096_gflops']:12.1f}")
    print(f"{'batch 4096 / matmul ceiling':<44} {in_process['fraction_of_ceiling_b4096']:12.2f}")
    print(f"{'HTTP batch 1 p50 / p99, ms':<44} {http['http_b1_p50_ms']:6.2f} / {http['http_b1_p99_ms']:.2f}")
    print(
        f"{'in-process batch 1 p50 / p99, ms':<44} {http['inprocess_b1_p50_ms']:6.3f} / {http['inprocess_b1_p99_ms']:.3f}"
    )
    print(f"{'HTTP batch 1000, formulas/s':<44} {http['http_b1000_formulas_per_s']:12.0f}")
    print(f"{'in-process batch 1000, formulas/s':<44} {http['inprocess_b1000_formulas_per_s']:12.0f}")
    print(f"{'HTTP / in-process at batch 1000':<44} {http['http_b1000_vs_inprocess']:12.2f}")
    print(f"{'HTTP batch 1000, cache hit, formulas/s':<44} {http['http_b1000_cache_hit_formulas_per_s']:12.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
