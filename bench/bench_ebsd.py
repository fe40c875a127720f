"""Benchmark the EBSD indexer next to Hough and dictionary indexing, side by side in one run.

In-process, patterns/s at batch 1 and 1024 (60x60 uint8 patterns of the held-out ``test_noisy`` kind, one PC
per request):

* ``tensor``: ONNX Runtime alone on the active version's graph input (2.0.0: resampled patterns; the graph
  prepares them, matches the compressed dictionary and answers its best matches);
* ``served``: the served path of the active version (codec checks, resampling, the graph, the PC correction,
  error calibration, fundamental-zone reduction and Euler angles), as the HTTP API calls it;
* ``served_pc_per_pattern``: the same with a different PC for every pattern (as in a scan with a PC per pixel:
  the PC correction is computed per pattern);
* ``cnn_served``: the served path of ``--baseline-version`` (1.0.0, the CNN: normalisation, network, least
  squares and decoding for the PC), side by side in the same rounds.

Baselines in the same rounds: Hough indexing (pyebsdindex through kikuchipy, per-pattern PCs, numba warm)
and kikuchipy dictionary indexing with a 2 deg dictionary (100k patterns, NCC), both on the same patterns
after kikuchipy's background removal (not timed).

Over HTTP (a real ``matserve serve`` subprocess): batch-1 latency p50/p99 and batch-1024 patterns/s with an
``application/x-npy`` body, next to the same calls in-process. Rounds are interleaved; ratios use the same
rounds. Run: ``make bench-ebsd`` (writes ``bench/results/ebsd.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from bench_formation_enthalpy import best_rate, latencies_ms, percentile  # bench/ is on sys.path as a script

from matserve.codecs.ebsd import NOMINAL_PC, normalize_patterns
from matserve.devserver import running_server
from matserve.models.ebsd_indexer import EbsdIndexerModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings
from training.ebsd import baselines
from training.ebsd.simulate import RECIPES, simulate_split

RESULTS = Path(__file__).resolve().parent / "results" / "ebsd.json"
BATCHES = (1, 1024)
BASELINE_PATTERNS = 128


def timed_rate(work: Callable[[], object], items: int) -> float:
    """Items per second of one call (baselines are too slow to repeat for seconds)."""
    started = time.perf_counter()
    work()
    return items / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--http-requests", type=int, default=200)
    parser.add_argument("--dictionary-resolution-deg", type=float, default=2.0)
    parser.add_argument("--baseline-version", default="1.0.0", help="the network version measured alongside")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings()
    registry = Registry(settings.models_dir)
    runtime = OnnxRuntime(intra_op_threads=settings.ort_threads)
    model = EbsdIndexerModel(registry, runtime)
    version = model.load()
    cnn_version = model.load(args.baseline_version)
    dictionary_graph = version.card.get("orientation_decoding", {}).get("method") == "dictionary"

    recipe = RECIPES["noisy"]
    split = simulate_split(1024, recipe, np.random.default_rng(2026))
    patterns = split["patterns"]
    pc = np.asarray(NOMINAL_PC, dtype=np.float32)
    graph_input = patterns.astype(np.float32) if dictionary_graph else normalize_patterns(patterns)
    jittered_pc = (pc + np.random.default_rng(7).uniform(-0.02, 0.02, (len(patterns), 3))).tolist()
    baseline_pc = np.tile(pc, (BASELINE_PATTERNS, 1))
    signal = baselines.preprocess(patterns[:BASELINE_PATTERNS], patterns.astype(np.float32).mean(axis=0))
    baselines.warm_up(signal, baseline_pc)
    dictionary = baselines.simulate_dictionary(args.dictionary_resolution_deg)

    def tensor(n: int) -> Callable[[], object]:
        return lambda: runtime.run(version, {"patterns": graph_input[:n]})

    def served(n: int, served_version: str | None = None, per_pattern_pc: bool = False) -> Callable[[], object]:
        items = list(patterns[:n])
        centres = jittered_pc[:n] if per_pattern_pc else pc.tolist()
        return lambda: model.index(items, pc=centres, version=served_version)

    rounds: list[dict] = []
    for _ in range(args.rounds):
        row: dict[str, float] = {
            "hough": timed_rate(lambda: baselines.hough(signal, baseline_pc), BASELINE_PATTERNS),
            "dictionary_indexing": timed_rate(
                lambda: baselines.dictionary_index(signal, dictionary), BASELINE_PATTERNS
            ),
        }
        for n in BATCHES:
            row[f"tensor_b{n}"] = best_rate(tensor(n), n, args.seconds)
            row[f"served_b{n}"] = best_rate(served(n), n, args.seconds)
            row[f"served_pc_per_pattern_b{n}"] = best_rate(served(n, per_pattern_pc=True), n, args.seconds)
            row[f"cnn_served_b{n}"] = best_rate(served(n, cnn_version.version), n, args.seconds)
            row[f"served_b{n}_vs_cnn"] = row[f"served_b{n}"] / row[f"cnn_served_b{n}"]
            row[f"served_b{n}_vs_hough"] = row[f"served_b{n}"] / row["hough"]
            row[f"served_b{n}_vs_dictionary_indexing"] = row[f"served_b{n}"] / row["dictionary_indexing"]
        rounds.append(row)
    in_process = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    http: dict[str, float] = {}
    npy = {"content-type": "application/x-npy"}
    query = {"pc": ",".join(str(v) for v in NOMINAL_PC)}

    def npy_body(n: int) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, patterns[:n])
        return buffer.getvalue()

    one, many = npy_body(1), npy_body(1024)
    with tempfile.TemporaryDirectory() as tmp, running_server(settings.models_dir, Path(tmp) / "server.log") as url:
        with httpx.Client(base_url=url, timeout=300) as client:

            def call(body: bytes) -> object:
                return client.post("/v1/ebsd/index", content=body, headers=npy, params=query).raise_for_status()

            b1 = latencies_ms(lambda: call(one), args.http_requests)
            local_b1 = latencies_ms(served(1), args.http_requests)
            b1024 = latencies_ms(lambda: call(many), 10)
            local_b1024 = latencies_ms(served(1024), 10)
    http["http_b1_p50_ms"] = percentile(b1, 50)
    http["http_b1_p99_ms"] = percentile(b1, 99)
    http["inprocess_b1_p50_ms"] = percentile(local_b1, 50)
    http["http_b1024_per_s"] = 1024 / (percentile(b1024, 50) / 1e3)
    http["inprocess_b1024_per_s"] = 1024 / (percentile(local_b1024, 50) / 1e3)
    http["http_b1024_vs_inprocess"] = http["http_b1024_per_s"] / http["inprocess_b1024_per_s"]
    http["http_b1024_vs_hough"] = http["http_b1024_per_s"] / in_process["hough"]
    http["b1024_request_mb"] = len(many) / 1e6

    report = {
        "version": version.version,
        "baseline_version": cnn_version.version,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ort_threads": settings.ort_threads,
        "patterns": "1024 simulated test_noisy-recipe patterns, 60x60 uint8, nominal PC (served_pc_per_pattern: "
        "nominal +- 0.02 per pattern)",
        "baseline_patterns": BASELINE_PATTERNS,
        "dictionary_resolution_deg": args.dictionary_resolution_deg,
        "in_process_patterns_per_s": in_process,
        "rounds": rounds,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"EBSD indexer {version.version}; patterns/s, medians of {args.rounds} interleaved rounds")
    print(f"{'Hough (pyebsdindex)':<34} {in_process['hough']:10.0f}")
    print(f"{'dictionary indexing (2 deg)':<34} {in_process['dictionary_indexing']:10.0f}")
    for kind in ("tensor", "served", "served_pc_per_pattern", "cnn_served"):
        print(f"{kind:<34} {in_process[f'{kind}_b1']:10.0f} {in_process[f'{kind}_b1024']:10.0f}  (batch 1, 1024)")
    for key, value in http.items():
        print(f"{key:<34} {value:10.2f}")


if __name__ == "__main__":
    main()
