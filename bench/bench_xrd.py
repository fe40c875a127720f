"""Benchmark the XRD phase classifier and novelty scorer, everything side by side in one run.

In-process, patterns/s at batch 1 and 256, for each model:

* ``tensor``: ONNX Runtime on patterns already on the model grid (the floor of the serving cost);
* ``grid``: the served lifecycle (codec checks + min-max, model, postprocess) on patterns on the model grid;
* ``resampled``: the same on patterns measured on another grid (0.01° steps over 10-100°, 9,000 points), so
  the codec resamples them;
* ``grid_b*_v1.0.0``: the served lifecycle of version 1.0.0 (no physics fit) in the same rounds, and the active
  version's rate as a ratio of it.

Baseline in the same rounds: the card's k-nearest-neighbour classifier on raw patterns (scikit-learn, brute
force) against 15,000 simulated reference patterns, the size of the training set.

Over HTTP (a real ``matserve serve`` subprocess, prediction cache off): batch-1 latency p50/p99 and batch-256
patterns/s of raw JSON requests, and batch-256 patterns/s through the SDK (``Client.classify_xrd`` /
``xrd_novelty`` on arrays, which it sends as NPY bodies) on the model grid and on the 9,000-point grid, next to
the same calls in-process. Rounds are interleaved; ratios use the same rounds. Run: ``make bench-xrd``
(writes ``bench/results/xrd.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from bench_formation_enthalpy import best_rate, latencies_ms, percentile  # bench/ is on sys.path as a script
from sklearn.neighbors import KNeighborsClassifier

from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.devserver import running_server
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings
from matserve_client import Client
from training.xrd import simulate as sim
from training.xrd.structures import KNOWN_PHASES

RESULTS = Path(__file__).resolve().parent / "results" / "xrd.json"
FINE_GRID_DEG = np.arange(10.0, 100.0, 0.01)
BATCHES = (1, 256)
JSON = {"content-type": "application/json"}
NO_CACHE_ENV = {"MATSERVE_CACHE": "0"}
BASELINE_VERSION = "1.0.0"
"""Served side by side with the active version: the last version without the physics fit (issue 21)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--http-requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings()
    registry = Registry(settings.models_dir)
    runtime = OnnxRuntime(intra_op_threads=settings.ort_threads)
    models = {"xrd_phase": XrdPhaseModel(registry, runtime), "xrd_novelty": XrdNoveltyModel(registry, runtime)}
    versions = {name: model.load() for name, model in models.items()}

    known = [p.name for p in KNOWN_PHASES]
    rng = np.random.default_rng(0)
    patterns = sim.single_phase_set(known, 86, rng, "float16")["x"].astype(np.float32)[:256]
    on_grid = [{"two_theta_deg": MODEL_GRID_DEG, "intensity": p} for p in patterns]
    phases = sim.sample_phase_params(KNOWN_PHASES[0], 256, rng)
    fine = sim.finish(sim.phase_signal(known[0], phases, sim.ideal_measurement_params(256), FINE_GRID_DEG),
                      sim.sample_measurement_params(256, rng), rng, FINE_GRID_DEG)  # fmt: skip
    off_grid = [{"two_theta_deg": FINE_GRID_DEG, "intensity": p} for p in fine]
    reference = sim.single_phase_set(known, 5000, rng, "float16", sim.WIDE)
    knn = KNeighborsClassifier(n_neighbors=1, n_jobs=2).fit(reference["x"].astype(np.float32), reference["y"])

    def tensor(name: str, n: int) -> Callable[[], object]:
        return lambda: runtime.run(versions[name], {"pattern": patterns[:n]})

    def served(name: str, items: list[dict], n: int, version: str | None = None) -> Callable[[], object]:
        return lambda: models[name](items[:n], version)

    rounds: list[dict] = []
    for _ in range(args.rounds):
        row: dict[str, float] = {}
        for n in BATCHES:
            row[f"knn_baseline_b{n}"] = best_rate(lambda n=n: knn.predict(patterns[:n]), n, args.seconds)
            for name in models:
                row[f"{name}_tensor_b{n}"] = best_rate(tensor(name, n), n, args.seconds)
                row[f"{name}_grid_b{n}"] = best_rate(served(name, on_grid, n), n, args.seconds)
                row[f"{name}_resampled_b{n}"] = best_rate(served(name, off_grid, n), n, args.seconds)
                row[f"{name}_grid_b{n}_vs_knn"] = row[f"{name}_grid_b{n}"] / row[f"knn_baseline_b{n}"]
                if versions[name].version != BASELINE_VERSION:  # the version before the physics fit, same rounds
                    row[f"{name}_grid_b{n}_v{BASELINE_VERSION}"] = best_rate(
                        served(name, on_grid, n, BASELINE_VERSION), n, args.seconds
                    )
                    row[f"{name}_grid_b{n}_vs_v{BASELINE_VERSION}"] = (
                        row[f"{name}_grid_b{n}"] / row[f"{name}_grid_b{n}_v{BASELINE_VERSION}"]
                    )
        rounds.append(row)
    in_process = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    http: dict[str, float] = {}
    fine_pairs = np.stack([np.stack([FINE_GRID_DEG, p]) for p in fine]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, running_server(settings.models_dir, Path(tmp) / "server.log",
                                                              NO_CACHE_ENV) as url:  # fmt: skip
        with httpx.Client(base_url=url, timeout=120) as client, Client(url, timeout=120) as sdk:
            for name, path in (("xrd_phase", "/v1/xrd/phase"), ("xrd_novelty", "/v1/xrd/novelty")):
                wire = [{"two_theta_deg": MODEL_GRID_DEG.tolist(), "intensity": p.tolist()} for p in patterns]
                one = json.dumps({"patterns": wire[:1]}).encode()
                many = json.dumps({"patterns": wire}).encode()

                def call(body: bytes, path: str = path) -> object:
                    return client.post(path, content=body, headers=JSON).raise_for_status()

                b1 = latencies_ms(lambda one=one: call(one), args.http_requests)
                local_b1 = latencies_ms(served(name, on_grid, 1), args.http_requests)
                b256 = latencies_ms(lambda many=many: call(many), 20)
                local_b256 = latencies_ms(served(name, on_grid, 256), 20)
                http[f"{name}_http_b1_p50_ms"] = percentile(b1, 50)
                http[f"{name}_http_b1_p99_ms"] = percentile(b1, 99)
                http[f"{name}_inprocess_b1_p50_ms"] = percentile(local_b1, 50)
                http[f"{name}_http_b256_per_s"] = 256 / (percentile(b256, 50) / 1e3)
                http[f"{name}_inprocess_b256_per_s"] = 256 / (percentile(local_b256, 50) / 1e3)
                http[f"{name}_http_b256_vs_inprocess"] = (
                    http[f"{name}_http_b256_per_s"] / http[f"{name}_inprocess_b256_per_s"]
                )
                http[f"{name}_b256_request_mb"] = len(many) / 1e6
                method = sdk.classify_xrd if name == "xrd_phase" else sdk.xrd_novelty
                sdk_grid = latencies_ms(lambda method=method: method(patterns), 20)
                sdk_fine = latencies_ms(lambda method=method: method(fine_pairs), 10)
                local_fine = latencies_ms(served(name, off_grid, 256), 10)
                http[f"{name}_sdk_arrays_b256_per_s"] = 256 / (percentile(sdk_grid, 50) / 1e3)
                http[f"{name}_sdk_arrays_b256_vs_inprocess"] = (
                    http[f"{name}_sdk_arrays_b256_per_s"] / http[f"{name}_inprocess_b256_per_s"]
                )
                http[f"{name}_sdk_9000pt_b256_per_s"] = 256 / (percentile(sdk_fine, 50) / 1e3)
                http[f"{name}_inprocess_9000pt_b256_per_s"] = 256 / (percentile(local_fine, 50) / 1e3)
                http[f"{name}_sdk_9000pt_b256_vs_inprocess"] = (
                    http[f"{name}_sdk_9000pt_b256_per_s"] / http[f"{name}_inprocess_9000pt_b256_per_s"]
                )

    report = {
        "versions": {name: v.version for name, v in versions.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ort_threads": settings.ort_threads,
        "in_process_patterns_per_s": in_process,
        "rounds": rounds,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"XRD models {report['versions']}; patterns/s, medians of {args.rounds} interleaved rounds")
    print(f"{'path':<40} {'batch 1':>10} {'batch 256':>10}")
    print(f"{'kNN baseline (raw patterns, 15k refs)':<40} {in_process['knn_baseline_b1']:10.0f} "
          f"{in_process['knn_baseline_b256']:10.0f}")  # fmt: skip
    for name in models:
        for kind in ("tensor", "grid", "resampled"):
            print(f"{f'{name} {kind}':<40} {in_process[f'{name}_{kind}_b1']:10.0f} "
                  f"{in_process[f'{name}_{kind}_b256']:10.0f}")  # fmt: skip
    for key, value in http.items():
        print(f"{key:<40} {value:10.2f}")


if __name__ == "__main__":
    main()
