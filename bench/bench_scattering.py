"""Benchmark the scattering sorter end to end: decode + preprocess + model, in-process and over HTTP.

Images are simulated at the detectors' full resolution (``training.scattering.simulate``: Pilatus 100k
195 x 487, Pilatus 1M 1043 x 981, Pilatus 2M 1679 x 1475; int32 with -1 in the module gaps) and written as
uncompressed TIFF files, as Pilatus detectors write them. Paths, images/s, measured in interleaved rounds:

* ``tensor``: ONNX Runtime on already encoded 128 x 128 x 2 inputs, batch 64 (the network alone);
* ``codec``: 64 TIFF files -> frames, read as the endpoint reads a multipart upload
  (:func:`matserve.api.scattering.decode_multipart`, on the served model's encode threads) -> encoded inputs
  (:func:`matserve.codecs.scattering.encode_image`, on the same threads);
* ``end_to_end``: 64 TIFF files -> results with the served model (decode, encode, network, probabilities);
  ``end_to_end_vs_tensor`` is the fraction of the network's own rate the whole path keeps.

Over HTTP (a real ``matserve serve`` subprocess): one TIFF per request (``image/tiff`` body), sequential
(latency p50/p99 and images/s) and from 4 concurrent clients (images/s), next to the same single-image calls
in-process. Run: ``make bench-scattering`` (writes ``bench/results/scattering.json``).

Versions with a setup input (1.2.0 on) get the setup with every image (``distance_m`` 0.3, ``wavelength_angstrom``
1.0, ``pixel_size_um`` 172, in-process and as query parameters), as a CBF header or the request gives it.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import tifffile
from bench_formation_enthalpy import best_rate, latencies_ms, percentile  # bench/ is on sys.path as a script

from matserve.api.scattering import decode_multipart
from matserve.codecs.detector_files import FrameBudget, read_frames
from matserve.codecs.scattering import Setup, setup_features
from matserve.devserver import running_server
from matserve.models.scattering_sorter import ScatteringSorterModel, encode_items, uses_setup
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.settings import Settings
from training.scattering.simulate import simulate

RESULTS = Path(__file__).resolve().parent / "results" / "scattering.json"
DETECTORS = {
    "pilatus100k_195x487": "Pilatus100k",
    "pilatus1m_1043x981": "Pilatus1M",
    "pilatus2m_1679x1475": "Pilatus2M",
}
BATCH = 64
CLIENTS = 4


def tiff_files(detector: str, n: int) -> list[bytes]:
    """``n`` distinct full-resolution simulated int32 images of ``detector`` as TIFF bytes (unrotated)."""
    files = []
    for i in range(n):
        image, _ = simulate(
            np.random.SeedSequence([2026, i]), ("saxs", "waxs", "gisaxs", "giwaxs")[i % 4], {detector: 1.0}
        )
        image = image.astype(np.int32) if image.dtype.kind != "f" else np.nan_to_num(image, nan=-1).astype(np.int32)
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, image, photometric="minisblack")
        files.append(buffer.getvalue())
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--distinct-images", type=int, default=16, help="simulated images per detector (cycled)")
    parser.add_argument("--http-requests", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = Settings()
    runtime = OnnxRuntime(intra_op_threads=settings.ort_threads)
    model = ScatteringSorterModel(Registry(settings.models_dir), runtime)
    version = model.load()
    files = {key: tiff_files(name, args.distinct_images) for key, name in DETECTORS.items()}
    batches = {key: [data[i % len(data)] for i in range(BATCH)] for key, data in files.items()}

    def decode(batch: list[bytes]) -> list:
        files = [(f"image_{k}.tif", data) for k, data in enumerate(batch)]
        # a batch of 64 Pilatus 2M frames (158 Mpixel) is over the service's default request budget (2^27 pixels)
        return decode_multipart(files, [], FrameBudget(max_frames=BATCH, max_pixels=2**31)).items

    tensors = {key: np.stack([e.tensor for e, *_ in encode_items(decode(batch))]) for key, batch in batches.items()}
    # As a CBF header or the request gives it (TIFFs carry none): every image gets the setup input.
    setup = Setup(distance_m=0.3, wavelength_angstrom=1.0, pixel_size_m=172e-6, source="request")

    def network_inputs(images: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        if not uses_setup(version.card):
            return {"images": images}
        return {"images": images, "setup": np.tile(setup_features(setup.q_span_inv_angstrom(shape)), (len(images), 1))}

    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        row: dict[str, float] = {}
        for key, batch in batches.items():
            inputs = network_inputs(tensors[key], decode(batch[:1])[0].image.shape)
            row[f"{key}_tensor"] = best_rate(lambda t=inputs: runtime.run(version, t), BATCH, args.seconds)
            row[f"{key}_codec"] = best_rate(lambda b=batch: encode_items(decode(b)), BATCH, args.seconds)
            row[f"{key}_end_to_end"] = best_rate(
                lambda b=batch: model.sort(decode(b), setup=setup), BATCH, args.seconds
            )
            row[f"{key}_end_to_end_vs_tensor"] = row[f"{key}_end_to_end"] / row[f"{key}_tensor"]
        rounds.append(row)
    in_process = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}

    # In-process single-image latencies first: an idle keep-alive connection would expire during them.
    local_latencies = {
        key: latencies_ms(lambda d=data: model.sort(read_frames(d[0], "image.tif"), setup=setup), args.http_requests)
        for key, data in files.items()
    }
    http: dict[str, float] = {}
    headers = {"content-type": "image/tiff"}
    setup_query = {"distance_m": "0.3", "wavelength_angstrom": "1.0", "pixel_size_um": "172"}
    with tempfile.TemporaryDirectory() as tmp, running_server(settings.models_dir, Path(tmp) / "server.log") as url:
        with httpx.Client(base_url=url, timeout=300) as client:
            for key, data in files.items():
                cycle = iter(range(10**9))

                def call(data: list[bytes] = data, cycle=cycle, client: httpx.Client = client) -> object:
                    body = data[next(cycle) % len(data)]
                    return client.post(
                        "/v1/scattering/sort", content=body, headers=headers, params=setup_query
                    ).raise_for_status()

                samples = latencies_ms(call, args.http_requests)
                local = local_latencies[key]
                started = time.perf_counter()
                with ThreadPoolExecutor(CLIENTS) as pool:
                    list(pool.map(lambda _: call(), range(args.http_requests)))
                concurrent = args.http_requests / (time.perf_counter() - started)
                http[f"{key}_http_b1_p50_ms"] = percentile(samples, 50)
                http[f"{key}_http_b1_p99_ms"] = percentile(samples, 99)
                http[f"{key}_http_b1_per_s"] = 1e3 / percentile(samples, 50)
                http[f"{key}_inprocess_b1_p50_ms"] = percentile(local, 50)
                http[f"{key}_http_b1_vs_inprocess"] = percentile(local, 50) / percentile(samples, 50)
                http[f"{key}_http_{CLIENTS}_clients_per_s"] = concurrent
                http[f"{key}_file_mb"] = len(data[0]) / 1e6

    report = {
        "version": version.version,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ort_threads": settings.ort_threads,
        "images": f"{args.distinct_images} simulated full-resolution int32 TIFFs per detector, cycled; batch {BATCH}",
        "in_process_images_per_s": in_process,
        "rounds": rounds,
        "http": http,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"scattering sorter {version.version}; images/s, medians of {args.rounds} interleaved rounds, batch {BATCH}")
    for key in DETECTORS:
        print(
            f"{key:<24} tensor {in_process[f'{key}_tensor']:8.0f}  codec {in_process[f'{key}_codec']:8.0f}  "
            f"end to end {in_process[f'{key}_end_to_end']:8.0f}"
        )
    for key, value in http.items():
        print(f"{key:<44} {value:10.2f}")


if __name__ == "__main__":
    main()
