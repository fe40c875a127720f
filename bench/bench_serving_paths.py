"""Benchmark every serving path of every model side by side, in one run, one table.

For each model (formation enthalpy, XRD phase, XRD novelty, EBSD indexer, scattering sorter), the same inputs go
through:

* ``in-process`` - the served lifecycle on in-process ONNX Runtime, no transport (the floor);
* ``BentoML HTTP`` - the SDK's ``Client`` against ``matserve serve`` (ONNX Runtime inside the API process; XRD
  arrays as NPY bodies, EBSD and scattering arrays as NPY files, as the SDK sends them);
* ``Triton HTTP`` - the SDK's ``KServeClient`` over KServe v2 HTTP to the model's Triton domain model (codec
  inside Triton's python backend, tensors via BLS);
* ``Triton gRPC (raw)`` - ``tritonclient.grpc`` straight to the domain model with tensors built beforehand (no
  SDK work in the loop: the transport and Triton alone);
* ``gRPC SDK`` - ``Client.grpc(...)``, the SDK's KServe client over gRPC, as lab software would call it.

Formation enthalpy also gets ``BentoML -> Triton (gRPC)`` (``matserve serve`` with ``TRITON_URL``) and one row
labelled cache hit. Every other row runs with the prediction cache off (``MATSERVE_CACHE=0``), so every request
runs the model. Triton is the real ``tritonserver`` of the nvidia-pytriton wheel (python backend + ONNX Runtime,
CPU). The machine is shared and load drifts, so paths are measured in interleaved rounds (each round visits every
path of every model) and compared as ratios within the run.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_formation_enthalpy import latencies_ms  # bench/ is on sys.path when run as a script

from matserve.codecs.detector_files import Frame
from matserve.codecs.xrd import MODEL_GRID_DEG
from matserve.devserver import running_server
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings
from matserve.triton.repository import build_repository, domain_model_name
from matserve.triton.server import running_triton
from matserve.worker import load_models
from matserve_client import Client

RESULTS = Path(__file__).resolve().parent / "results" / "serving_paths.json"
BATCH = 256
ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Al", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Zr", "La",
            "O", "S", "N", "F", "Cl", "Si", "P"]  # fmt: skip
NO_CACHE = {"MATSERVE_CACHE": "0"}


def distinct_formulas(n: int) -> list[str]:
    """``n`` different ternary formulas (deterministic)."""
    formulas = []
    for a in ELEMENTS[:18]:
        for b in ELEMENTS:
            for c in ("O", "S", "N", "F"):
                if len({a, b, c}) == 3:
                    formulas += [f"{a}{b}{c}3", f"{a}2{b}{c}4"]
    return formulas[:n]


def xrd_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 2048)`` float32 patterns on the model grid: a few Gaussian peaks on a noisy background."""
    out = rng.random((n, MODEL_GRID_DEG.size)) * 0.05
    for row in out:
        for centre in rng.uniform(25, 85, 6):
            row += np.exp(-0.5 * ((MODEL_GRID_DEG - centre) / 0.1) ** 2)
    return out.astype(np.float32)


def ebsd_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 60, 60)`` float32 band-like patterns (speed only: the answers are not checked here)."""
    y, x = np.mgrid[0:60, 0:60].astype(np.float32)
    out = np.empty((n, 60, 60), np.float32)
    for k in range(n):
        angle = rng.uniform(0, np.pi)
        out[k] = 1 + np.cos((x * np.cos(angle) + y * np.sin(angle)) / 3) + rng.random((60, 60), np.float32) * 0.3
    return out


def scattering_images(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """``(n, size, size)`` float32 ring images with Poisson noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    radius = np.hypot(x, y)
    out = np.empty((n, size, size), np.float32)
    for k in range(n):
        ring = 50 * np.exp(-0.5 * ((radius - rng.uniform(10, size / 3)) / 2) ** 2) + 200 / (1 + radius)
        out[k] = rng.poisson(ring + 2)
    return out


@dataclass
class Workload:
    """One model's inputs at batch 1 and :data:`BATCH`, and how each path runs them."""

    model: str
    one: Any
    many: Any
    in_process: Callable[[Any], object]
    sdk_method: str
    raw_inputs: Callable[[Any], dict[str, np.ndarray]]
    sdk_one: Any = None
    sdk_many: Any = None
    """What the SDK paths send, when not ``one`` / ``many`` (scattering: a 2D array, a multi-frame TIFF)."""


def raw_grpc_call(client: Any, triton_model: str, tensors: dict[str, np.ndarray]) -> Callable[[], object]:
    """A ``tritonclient.grpc`` infer of prepared tensors on a domain model."""
    import tritonclient.grpc as grpcclient

    def triton_dtype(array: np.ndarray) -> str:
        return {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
                np.dtype(np.uint8): "UINT8"}.get(array.dtype, "BYTES")  # fmt: skip

    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), triton_dtype(array))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    def call() -> object:
        return client.infer(triton_model, inputs)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all paths")
    parser.add_argument("--b1-requests", type=int, default=60, help="batch-1 requests per path per round")
    parser.add_argument("--batch-requests", type=int, default=3, help="batch-256 requests per path per round")
    parser.add_argument("--image-size", type=int, default=128, help="scattering images are size x size pixels")
    parser.add_argument("--models", default="formation_enthalpy,xrd_phase,xrd_novelty,ebsd_indexer,scattering_sorter")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient

    settings = Settings()
    registry = Registry(settings.models_dir)
    models = load_models(registry, OnnxRuntime(intra_op_threads=settings.ort_threads), None, settings.models_dir)
    rng = np.random.default_rng(0)

    def xrd_items(array: np.ndarray) -> list[dict[str, Any]]:
        return [{"two_theta_deg": MODEL_GRID_DEG, "intensity": row} for row in array]

    def scattering_frames(array: np.ndarray) -> list[Any]:
        return [Frame(image=image, mask=None, label=f"images[{k}]") for k, image in enumerate(array)]

    xrd_raw = lambda a: {"two_theta_deg": np.broadcast_to(MODEL_GRID_DEG, a.shape).copy(),  # noqa: E731
                         "intensity": a.astype(np.float64)}  # fmt: skip
    workloads = {
        "formation_enthalpy": Workload(
            "formation_enthalpy", ["Fe2O3"], distinct_formulas(BATCH), lambda f: models["formation_enthalpy"](f),
            "formation_enthalpy", lambda f: {"formulas": np.array([s.encode() for s in f], dtype=np.object_)},
        ),
        "xrd_phase": Workload(
            "xrd_phase", xrd_patterns(1, rng), xrd_patterns(BATCH, rng),
            lambda a: models["xrd_phase"](xrd_items(a)), "classify_xrd", xrd_raw,
        ),
        "xrd_novelty": Workload(
            "xrd_novelty", xrd_patterns(1, rng), xrd_patterns(BATCH, rng),
            lambda a: models["xrd_novelty"](xrd_items(a)), "xrd_novelty", xrd_raw,
        ),
        "ebsd_indexer": Workload(
            "ebsd_indexer", ebsd_patterns(1, rng), ebsd_patterns(BATCH, rng),
            lambda a: models["ebsd_indexer"].index(list(a)), "index_ebsd", lambda a: {"patterns": a},
        ),
        "scattering_sorter": Workload(
            "scattering_sorter", scattering_images(1, rng, args.image_size),
            scattering_images(BATCH, rng, args.image_size),
            lambda a: models["scattering_sorter"].sort(scattering_frames(a)), "sort_scattering",
            lambda a: {"images": a},
        ),
    }  # fmt: skip
    workloads = {name: workloads[name] for name in args.models.split(",")}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "scattering_sorter" in workloads:  # the SDK sends one 2D array, or a file of frames
            import tifffile

            stack = tmp / "frames.tif"
            tifffile.imwrite(stack, workloads["scattering_sorter"].many)
            workloads["scattering_sorter"].sdk_one = workloads["scattering_sorter"].one[0]
            workloads["scattering_sorter"].sdk_many = stack
        build_repository(registry, tmp / "repo", target="cpu")
        with (
            running_triton(tmp / "repo", tmp / "triton.log") as triton,
            running_server(settings.models_dir, tmp / "api.log", NO_CACHE) as api,
            running_server(settings.models_dir, tmp / "api-cache.log", {}) as api_cached,
            running_server(
                settings.models_dir, tmp / "api-triton.log", {**NO_CACHE, "TRITON_URL": f"grpc://{triton.grpc_target}"}
            ) as api_triton,
            Client(api, timeout=300) as http_sdk,
            Client(api_cached, timeout=300) as http_sdk_cached,
            Client(api_triton, timeout=300) as http_sdk_triton,
            Client.grpc(triton.http_url, timeout=300) as triton_http,
            Client.grpc(f"grpc://{triton.grpc_target}", timeout=300) as grpc_sdk,
            grpcclient.InferenceServerClient(triton.grpc_target) as raw_grpc,
        ):
            paths: dict[tuple[str, str], tuple[Callable[[], object], Callable[[], object]]] = {}
            for name, work in workloads.items():
                domain = domain_model_name(name)

                def via(client: Any, work: Workload = work) -> tuple[Callable[[], object], Callable[[], object]]:
                    method = getattr(client, work.sdk_method)
                    one = work.one if work.sdk_one is None else work.sdk_one
                    many = work.many if work.sdk_many is None else work.sdk_many
                    return (lambda: method(one)), (lambda: method(many))

                paths[(name, "in-process")] = (
                    (lambda w=work: w.in_process(w.one)),
                    (lambda w=work: w.in_process(w.many)),
                )
                paths[(name, "BentoML HTTP")] = via(http_sdk)
                paths[(name, "Triton HTTP")] = via(triton_http)
                paths[(name, "Triton gRPC (raw)")] = (raw_grpc_call(raw_grpc, domain, work.raw_inputs(work.one)),
                                                      raw_grpc_call(raw_grpc, domain, work.raw_inputs(work.many)))  # fmt: skip
                paths[(name, "gRPC SDK")] = via(grpc_sdk)
                if name == "formation_enthalpy":
                    paths[(name, "BentoML -> Triton (gRPC)")] = via(http_sdk_triton)
                    paths[(name, "BentoML HTTP, cache hit")] = via(http_sdk_cached)
            for single, batch in paths.values():  # warm-up: sessions, numba, connection pools
                single()
                batch()
            b1: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
            bn: dict[tuple[str, str], list[float]] = {key: [] for key in paths}
            for _ in range(args.rounds):
                for key, (single, batch) in paths.items():
                    b1[key] += latencies_ms(single, args.b1_requests)
                    bn[key] += latencies_ms(batch, args.batch_requests)

    rows = []
    for name, path in paths:
        p50 = float(np.percentile(b1[(name, path)], 50))
        http_p50 = float(np.percentile(b1[(name, "BentoML HTTP")], 50))
        rows.append({
            "model": name,
            "path": path,
            "b1_p50_ms": p50,
            "b1_p99_ms": float(np.percentile(b1[(name, path)], 99)),
            f"b{BATCH}_items_per_s": BATCH / (statistics.median(bn[(name, path)]) / 1e3),
            "b1_p50_vs_bentoml_http": p50 / http_p50,
        })  # fmt: skip
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {name: registry.active_version(name) for name in workloads},
        "cache": "off, except rows labelled cache hit",
        "rounds": args.rounds,
        "b1_requests_per_path": args.rounds * args.b1_requests,
        f"b{BATCH}_requests_per_path": args.rounds * args.batch_requests,
        "scattering_image_px": [args.image_size, args.image_size],
        "rows": rows,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| model | path | batch-1 p50 ms | batch-1 p99 ms | batch-{BATCH} items/s | p50 vs BentoML HTTP |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['model']} | {row['path']} | {row['b1_p50_ms']:.2f} | {row['b1_p99_ms']:.2f} | "
              f"{row[f'b{BATCH}_items_per_s']:,.0f} | {row['b1_p50_vs_bentoml_http']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
