"""Benchmark every serving path of the formation enthalpy predictor side by side, in one run, one table.

Paths (formulas in, eV/atom out, so every path does the same work: codec + network):

* ``in-process ORT`` - :class:`FormationEnthalpyModel` on in-process ONNX Runtime, no transport (the floor);
* ``BentoML in-process`` - ``matserve serve`` over HTTP, ONNX Runtime inside the API process;
* ``BentoML -> Triton`` - ``matserve serve`` with ``TRITON_URL`` (gRPC) delegating tensors to Triton;
* ``Triton HTTP`` / ``Triton gRPC`` - the SDK's KServe-v2 transport straight to Triton's domain model
  ``formation_enthalpy_formulas`` (codec inside Triton's python backend, tensors via BLS).

The prediction cache is off (``MATSERVE_CACHE=0``) so that every request runs the model; one extra row
shows a BentoML cache hit. Triton is the real ``tritonserver`` of the nvidia-pytriton wheel (python
backend + ONNX Runtime, CPU). The machine is shared and load drifts, so the paths are measured in
interleaved rounds (each round visits every path) and compared as ratios within the run.

Run: ``make bench-serving`` (writes ``bench/results/serving_paths.json`` and prints a markdown table).
"""

from __future__ import annotations

import argparse
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
from bench_formation_enthalpy import latencies_ms  # bench/ is on sys.path when run as a script

from matserve.devserver import running_server
from matserve.models.formation_enthalpy import FormationEnthalpyModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings
from matserve.triton.repository import build_repository
from matserve.triton.server import running_triton
from matserve_client.kserve import KServeClient

RESULTS = Path(__file__).resolve().parent / "results" / "serving_paths.json"
ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Al", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Zr", "La",
            "O", "S", "N", "F", "Cl", "Si", "P"]  # fmt: skip


def distinct_formulas(n: int) -> list[str]:
    """``n`` different ternary formulas (deterministic)."""
    formulas = []
    for a in ELEMENTS[:18]:
        for b in ELEMENTS:
            for c in ("O", "S", "N", "F"):
                if len({a, b, c}) == 3:
                    formulas += [f"{a}{b}{c}3", f"{a}2{b}{c}4"]
    return formulas[:n]


def http_caller(client: httpx.Client, formulas: list[str]) -> Callable[[], object]:
    body = {"formulas": formulas}

    def call() -> object:
        response = client.post("/v1/formation-enthalpy", json=body)
        response.raise_for_status()
        return response

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all paths")
    parser.add_argument("--b1-requests", type=int, default=200, help="batch-1 requests per path per round")
    parser.add_argument("--b1000-requests", type=int, default=5, help="batch-1000 requests per path per round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings()
    registry = Registry(settings.models_dir)
    model = FormationEnthalpyModel(registry, OnnxRuntime(intra_op_threads=settings.ort_threads))
    version = model.load()
    one = ["Fe2O3"]
    thousand = distinct_formulas(1000)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_repository(registry, tmp / "repo", target="cpu")
        no_cache = {"MATSERVE_CACHE": "0"}
        with (
            running_triton(tmp / "repo", tmp / "triton.log") as triton,
            running_server(settings.models_dir, tmp / "api.log", no_cache) as api,
            running_server(settings.models_dir, tmp / "api-cache.log", {}) as api_cached,
            running_server(
                settings.models_dir, tmp / "api-triton.log", {**no_cache, "TRITON_URL": f"grpc://{triton.grpc_target}"}
            ) as api_triton,
            httpx.Client(base_url=api, timeout=60) as http_api,
            httpx.Client(base_url=api_cached, timeout=60) as http_api_cached,
            httpx.Client(base_url=api_triton, timeout=60) as http_api_triton,
            KServeClient(triton.http_url, timeout=60) as triton_http,
            KServeClient(f"grpc://{triton.grpc_target}", timeout=60) as triton_grpc,
        ):
            paths: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
                "in-process ORT (floor)": (lambda: model(one), lambda: model(thousand)),
                "BentoML in-process": (http_caller(http_api, one), http_caller(http_api, thousand)),
                "BentoML -> Triton (gRPC)": (http_caller(http_api_triton, one), http_caller(http_api_triton, thousand)),
                "Triton HTTP (direct)": (
                    lambda: triton_http.formation_enthalpy(one),
                    lambda: triton_http.formation_enthalpy(thousand),
                ),
                "Triton gRPC (direct)": (
                    lambda: triton_grpc.formation_enthalpy(one),
                    lambda: triton_grpc.formation_enthalpy(thousand),
                ),
                "BentoML in-process, cache hit": (
                    http_caller(http_api_cached, one),
                    http_caller(http_api_cached, thousand),
                ),
            }
            b1: dict[str, list[float]] = {name: [] for name in paths}
            b1000: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, (single, batch) in paths.items():
                    b1[name] += latencies_ms(single, args.b1_requests)
                    b1000[name] += latencies_ms(batch, args.b1000_requests)

    rows = []
    reference_p50 = statistics.median(b1["BentoML in-process"])
    for name in paths:
        p50 = float(np.percentile(b1[name], 50))
        rows.append({
            "path": name,
            "b1_p50_ms": p50,
            "b1_p99_ms": float(np.percentile(b1[name], 99)),
            "b1000_formulas_per_s": 1000 / (statistics.median(b1000[name]) / 1e3),
            "b1_p50_vs_bentoml_in_process": p50 / reference_p50,
        })  # fmt: skip
    report = {
        "model": version.name,
        "version": version.version,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": args.rounds,
        "b1_requests_per_path": args.rounds * args.b1_requests,
        "b1000_requests_per_path": args.rounds * args.b1000_requests,
        "rows": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| path | batch-1 p50 ms | batch-1 p99 ms | batch-1000 formulas/s | p50 vs BentoML in-process |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['path']} | {row['b1_p50_ms']:.2f} | {row['b1_p99_ms']:.2f} | "
            f"{row['b1000_formulas_per_s']:,.0f} | {row['b1_p50_vs_bentoml_in_process']:.2f} |"
        )


if __name__ == "__main__":
    main()
