"""Every model answers the same on every path: in-process, BentoML HTTP, Triton HTTP and Triton gRPC.

For each model the same inputs go through

* the served model class over the repository's registry (``models/``) with in-process ONNX Runtime;
* the SDK's HTTP :class:`~matserve_client.Client` against a real ``matserve serve`` (``server_url``);
* the SDK's :class:`~matserve_client.kserve.KServeClient` against the real tritonserver (``triton``, from
  ``tests/integration/conftest.py``), over Triton's HTTP/REST and its gRPC protocol, which call the domain
  models ``matserve triton build-repo`` generates (``formation_enthalpy_formulas``, ``xrd_phase_patterns``,
  ``xrd_novelty_patterns``, ``ebsd_indexer_patterns``, ``scattering_sorter_images``).

Results must agree within 1e-5 on every number and exactly on everything else (labels, flags, versions,
sources). Then hostile inputs to the new Triton models: each gets a clear error, and tritonserver keeps serving.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2

from matserve.codecs.ebsd import NOMINAL_PC
from matserve.models.ebsd_indexer import EbsdIndexerModel
from matserve.models.formation_enthalpy import FormationEnthalpyModel
from matserve.models.scattering_sorter import ScatteringSorterModel
from matserve.models.xrd_novelty import XrdNoveltyModel
from matserve.models.xrd_phase import XrdPhaseModel
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.triton.server import TritonEndpoints
from matserve_client import Client, InvalidInputError, NotFoundError
from matserve_client.kserve import KServeClient, KServeTransport
from matserve_client.models import (
    EbsdIndexResult,
    FormationEnthalpyResult,
    ScatteringResult,
    XrdNoveltyResult,
    XrdPhaseResult,
)
from tests.conftest import MODELS_DIR

TOLERANCE = 1e-5
"""Numbers agree within this, absolute, or relative for numbers beyond 1 (an Euler angle of 312.6 degrees is
float32 graph output times 57.3: its last digits differ between numpy 1.26, Triton's environment, and numpy 2)."""
DOMAIN_MODELS = ("formation_enthalpy_formulas", "xrd_phase_patterns", "xrd_novelty_patterns",
                 "ebsd_indexer_patterns", "scattering_sorter_images")  # fmt: skip


@pytest.fixture(scope="module")
def in_process() -> Callable[[type], Any]:
    """A served model class over ``models/`` with in-process ONNX Runtime (one session per model and version)."""
    registry, runtime = Registry(MODELS_DIR), OnnxRuntime(intra_op_threads=1)
    return lambda cls: cls(registry, runtime)


@pytest.fixture(scope="module")
def clients(triton: TritonEndpoints, server_url: str) -> Iterator[dict[str, Any]]:
    """The SDK over BentoML HTTP, Triton HTTP and Triton gRPC, by path name."""
    with (
        Client(server_url, timeout=120) as http,
        KServeClient(triton.http_url, timeout=120) as triton_http,
        Client.grpc(triton.grpc_target, timeout=120) as triton_grpc,
    ):
        yield {"bentoml-http": http, "triton-http": triton_http, "triton-grpc": triton_grpc}


def assert_same(expected: Any, actual: Any, where: str = "") -> None:
    """Numbers within :data:`TOLERANCE` (relative beyond 1; NaN only as NaN), anything else exactly, recursively."""
    if isinstance(expected, BaseModel):
        expected, actual = expected.model_dump(), actual.model_dump()
    if isinstance(expected, bool) or expected is None or isinstance(expected, str | bytes):
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{where}: {actual!r}"
        if math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert abs(actual - expected) <= TOLERANCE * max(1.0, abs(expected)), f"{where}: {actual!r} vs {expected!r}"
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: {len(actual)} items, expected {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}[{i}]")
    else:  # pragma: no cover - a type this comparison does not know
        raise TypeError(f"{where}: cannot compare {type(expected).__name__}")


def assert_every_path_agrees(reference: list[BaseModel], answers: dict[str, list[BaseModel]]) -> None:
    assert reference, "the reference answered nothing"
    for path, results in answers.items():
        assert_same(reference, results, path)


def png_pixels(data: bytes | None) -> np.ndarray:
    """The pixels of a PNG (fails on anything else)."""
    assert data, "no PNG"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def without_pngs(result: BaseModel, *names: str) -> tuple[BaseModel, list[np.ndarray]]:
    """The result without its PNG fields, and their pixels (PNG encoders of the two environments may differ in
    compression, not in pixels)."""
    return result.model_copy(update=dict.fromkeys(names)), [png_pixels(getattr(result, n)) for n in names]


# -- the repository -----------------------------------------------------------------------------------------------


def test_every_registry_model_has_a_domain_model(repository: Path) -> None:
    manifest = json.loads((repository / "matserve_repository.json").read_text())
    assert sorted(entry["domain_model"] for entry in manifest["models"].values()) == sorted(DOMAIN_MODELS)
    for name in DOMAIN_MODELS[1:]:
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.backend == "python" and config.max_batch_size == 0
        assert [o.name for o in config.output][:2] == ["results_json", "registry_version"]
        versions = json.loads(config.parameters["matserve_versions"].string_value)
        assert sorted(int(n) for n in versions) == sorted(config.version_policy.specific.versions)
        for number in versions:
            card = json.loads((repository / name / number / "card.json").read_text())
            assert card["version"] == versions[number]["version"]
            for side_file in set(card["files"]) - {"model.onnx"}:  # e.g. the novelty scorer's latent reference
                assert (repository / name / number / side_file).is_file(), (name, number, side_file)
    xrd = text_format.Parse((repository / "xrd_phase_patterns" / "config.pbtxt").read_text(),
                            model_config_pb2.ModelConfig())  # fmt: skip
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in xrd.input] == [
        ("two_theta_deg", model_config_pb2.TYPE_FP64, [-1, -1], False),
        ("intensity", model_config_pb2.TYPE_FP64, [-1, -1], False),
        ("points", model_config_pb2.TYPE_INT64, [-1], True),
        ("wavelength_angstrom", model_config_pb2.TYPE_FP64, [-1], True),
        ("options", model_config_pb2.TYPE_STRING, [1], True),
    ]


# -- one answer, every path ---------------------------------------------------------------------------------------


def test_formation_enthalpy_parity(in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    formulas = ["NaCl", "Fe2O3", "Xx2", "O", "", "LiFePO4", "La0.7Sr0.3MnO3", "Na(Cl"]
    prediction = in_process(FormationEnthalpyModel)(formulas, None)
    reference = [FormationEnthalpyResult(**r, model=prediction.model, version=prediction.version)
                 for r in prediction.results]  # fmt: skip
    answers = {path: client.formation_enthalpy(formulas) for path, client in clients.items()}
    assert_every_path_agrees(reference, answers)
    assert [r.ok for r in reference] == [True, True, False, True, False, True, True, False]


def xrd_patterns() -> list[dict[str, Any]]:
    """Six patterns: on the model grid, on a coarser and a finer grid, another wavelength, fewer points."""
    rng = np.random.default_rng(3)
    grid = np.linspace(20, 90, 2048)
    patterns = [{"two_theta_deg": grid, "intensity": rng.random(2048) ** 8} for _ in range(3)]
    coarse = np.linspace(15, 95, 1500)
    patterns.append({"two_theta_deg": coarse, "intensity": rng.random(1500) ** 6 * 100})
    fine = np.linspace(20, 90, 3001)
    patterns.append({"two_theta_deg": fine, "intensity": rng.random(3001) ** 8, "wavelength_angstrom": 1.5406})
    patterns.append({"two_theta_deg": np.linspace(25, 85, 400), "intensity": rng.random(400) + 0.5})
    return patterns


@pytest.mark.parametrize("name", ["xrd_phase", "xrd_novelty"])
def test_xrd_parity(name: str, in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    """Patterns of different grids, lengths and wavelengths (one per pattern, and one for the request)."""
    patterns = xrd_patterns()
    model_class, result_type, method = {"xrd_phase": (XrdPhaseModel, XrdPhaseResult, "classify_xrd"),
                                        "xrd_novelty": (XrdNoveltyModel, XrdNoveltyResult, "xrd_novelty")}[name]  # fmt: skip
    request_wavelength = 1.54056
    items = [{**p, "wavelength_angstrom": p.get("wavelength_angstrom") or request_wavelength} for p in patterns]
    prediction = in_process(model_class)(items, None)
    assert not any(r["error"] for r in prediction.results)
    reference = [result_type(**{k: v for k, v in r.items() if k != "error"}, model=name, version=prediction.version)
                 for r in prediction.results]  # fmt: skip
    answers = {path: getattr(client, method)(patterns, wavelength_angstrom=request_wavelength)
               for path, client in clients.items()}  # fmt: skip
    assert_every_path_agrees(reference, answers)


@pytest.mark.parametrize("name", ["xrd_phase", "xrd_novelty"])
def test_xrd_array_batch_parity(name: str, in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    """Whole arrays, as a pipeline holds them: ``(n, 2048)`` on the model grid and ``(n, 2, m)`` on another grid,
    sent as NPY bodies over HTTP and as slices of the arrays over KServe; every path agrees."""
    rng = np.random.default_rng(5)
    on_grid = (rng.random((5, 2048)) ** 8).astype(np.float32)
    other = np.linspace(18, 92, 2500)
    pairs = np.stack([np.stack([other, rng.random(2500) ** 8]) for _ in range(4)])
    model_class, result_type, method = {"xrd_phase": (XrdPhaseModel, XrdPhaseResult, "classify_xrd"),
                                        "xrd_novelty": (XrdNoveltyModel, XrdNoveltyResult, "xrd_novelty")}[name]  # fmt: skip
    grid = np.linspace(20, 90, 2048)
    for batch, items in (
        (on_grid, [{"two_theta_deg": grid, "intensity": row} for row in on_grid]),
        (pairs, [{"two_theta_deg": pair[0], "intensity": pair[1], "wavelength_angstrom": 1.5406} for pair in pairs]),
    ):
        wavelength = None if batch is on_grid else 1.5406
        prediction = in_process(model_class)(items, None)
        reference = [result_type(**{k: v for k, v in r.items() if k != "error"}, model=name,
                                 version=prediction.version) for r in prediction.results]  # fmt: skip
        answers = {path: getattr(client, method)(batch, wavelength_angstrom=wavelength)
                   for path, client in clients.items()}  # fmt: skip
        assert_every_path_agrees(reference, answers)


def test_xrd_novelty_plots_parity(in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    """With ``plots``: the same numbers and PNGs of the same pixels (within 2 levels) on every path."""
    patterns = xrd_patterns()[2:5]  # not 2: the HTTP client's as_pattern_list mistakes 2 mappings for a pair
    answers = {path: client.xrd_novelty(patterns, plots=True) for path, client in clients.items()}
    reference = answers.pop("bentoml-http")
    for path, results in answers.items():
        for expected, actual in zip(reference, results, strict=True):
            expected_rest, expected_pngs = without_pngs(expected, "reconstruction_png", "latent_map_png")
            actual_rest, actual_pngs = without_pngs(actual, "reconstruction_png", "latent_map_png")
            assert_same(expected_rest, actual_rest, path)
            for e, a in zip(expected_pngs, actual_pngs, strict=True):
                assert e.shape == a.shape, path
                assert np.abs(e - a).max() <= 2, path


@pytest.mark.parametrize("version", ["2.0.0", "1.0.0"])
def test_ebsd_index_parity(version: str, in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    """The dictionary version (2.0.0) and the CNN (1.0.0, another Triton tensor model behind the same domain
    model); integer counts and floats, 60 px and 120 px patterns, the nominal PC and one PC per pattern."""
    rng = np.random.default_rng(5)
    counts = (rng.random((3, 60, 60)) * 255).round().astype(np.uint8)
    large = rng.random((2, 120, 120)).astype(np.float32) * 1000
    pc = np.array([[0.42, 0.21, 0.50], [0.43, 0.22, 0.49], [0.425, 0.213, 0.501]])
    model = in_process(EbsdIndexerModel)
    answers: dict[str, list[EbsdIndexResult]] = {}
    references: list[EbsdIndexResult] = []
    for patterns, centres in ((counts, pc), (large, list(NOMINAL_PC))):
        prediction = model.index(list(patterns.astype(np.float32)), pc=centres, version=version)
        references += [EbsdIndexResult(**r, model=prediction.model, version=prediction.version)
                       for r in prediction.results]  # fmt: skip
        for path, client in clients.items():
            answers.setdefault(path, []).extend(client.index_ebsd(patterns, pc=centres, version=version))
    assert {r.version for r in references} == {version}
    assert_every_path_agrees(references, answers)


def test_ebsd_index_files_parity(tmp_path: Path, clients: dict[str, Any]) -> None:
    """PNG files (sent as they are, decoded by the HTTP API's decoders inside Triton) name their sources."""
    rng = np.random.default_rng(7)
    files = []
    for i in range(2):
        path = tmp_path / f"pattern_{i}.png"
        Image.fromarray((rng.random((80, 80)) * 255).astype(np.uint8)).save(path)
        files.append(path)
    answers = {path: client.index_ebsd(files) for path, client in clients.items()}
    reference = answers.pop("bentoml-http")
    assert [r.source for r in reference] == [str(p) for p in files]
    assert_every_path_agrees(reference, answers)


def test_scattering_sort_parity(in_process: Callable[[type], Any], clients: dict[str, Any]) -> None:
    """Integer counts with detector gaps (sent as NPY, as the HTTP client does), with and without the setup,
    with Grad-CAM PNGs of the predicted technique and of a chosen label."""
    from matserve.api.scattering import decode_body
    from matserve.codecs.detector_files import FrameBudget
    from matserve.models.scattering_sorter import setup_of

    rng = np.random.default_rng(6)
    images = [(rng.poisson(5.0, (195, 487)) + 50 * (rng.random((195, 487)) < 0.01)).astype(np.int32) for _ in range(2)]
    images[1][:, 100:110] = -1  # a detector gap
    calls = [({"saliency": True, "distance_m": 0.25, "wavelength_angstrom": 1.0, "pixel_size_um": 172.0}, images[0]),
             ({"saliency_label": "rings"}, images[1])]  # fmt: skip
    model = in_process(ScatteringSorterModel)
    for options, image in calls:
        buffer = io.BytesIO()
        np.save(buffer, image)
        frames = decode_body("application/x-npy", buffer.getvalue(), FrameBudget()).items
        setup = setup_of(options, "request")  # what the HTTP route makes of the same options
        prediction = model.sort(frames, saliency=options.get("saliency", False),
                                saliency_label=options.get("saliency_label"), setup=setup)  # fmt: skip
        reference = []
        for result in prediction.results:
            fields = dict(result)
            png = fields.pop("saliency_png_base64")
            reference.append(ScatteringResult(**fields, source="body", saliency_png=base64_bytes(png),
                                              model=prediction.model, version=prediction.version))  # fmt: skip
        assert reference[0].ok and reference[0].saliency_label
        expected_rest, expected_pngs = without_pngs(reference[0], "saliency_png")
        for path, client in clients.items():
            (answer,) = client.sort_scattering(image, **options)
            rest, pngs = without_pngs(answer, "saliency_png")
            assert_same(expected_rest, rest, path)
            assert expected_pngs[0].shape == pngs[0].shape
            assert np.abs(expected_pngs[0] - pngs[0]).max() <= 2, path


def base64_bytes(text: str | None) -> bytes | None:
    import base64

    return base64.b64decode(text) if text else None


def test_triton_names_and_pins_registry_versions(clients: dict[str, Any]) -> None:
    pattern = xrd_patterns()[0]
    for path in ("triton-http", "triton-grpc"):
        client = clients[path]
        assert client.classify_xrd(pattern, version="1.0.0")[0].version == "1.0.0"
        older = client.sort_scattering(np.random.default_rng(1).poisson(5.0, (64, 64)), version="1.1.0")
        assert older[0].version == "1.1.0" and older[0].q_span_inv_angstrom is None  # 1.1.0 takes no setup
        with pytest.raises(NotFoundError, match=r"no version '9\.9\.9'"):
            client.index_ebsd(np.zeros((1, 60, 60)), version="9.9.9")


# -- hostile inputs -----------------------------------------------------------------------------------------------

GRID = np.linspace(20, 90, 2048)[None]
PATTERN = np.random.default_rng(0).random((1, 2048))
IMAGE = np.random.default_rng(0).poisson(5.0, (1, 64, 64)).astype(np.float32)
EBSD = np.random.default_rng(0).random((1, 60, 60)).astype(np.float32)


def _json(value: Any) -> np.ndarray:
    return np.array([value if isinstance(value, bytes) else json.dumps(value).encode()], dtype=np.object_)


HOSTILE: dict[str, tuple[str, dict[str, np.ndarray], str]] = {
    "intensity FP32, not FP64": ("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": PATTERN.astype(np.float32)},
                                 "expects 'FP64'"),
    "intensity 1-D": ("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": PATTERN[0]}, "intensity"),
    "grid rows != patterns": ("xrd_novelty_patterns", {"two_theta_deg": np.repeat(GRID, 3, axis=0),
                                                       "intensity": np.repeat(PATTERN, 2, axis=0)},
                              r"two_theta_deg has shape \[3, 2048\]"),
    "NaN intensity": ("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": np.full((1, 2048), np.nan)},
                      r"patterns\[0\]: intensity contains NaN"),
    "points beyond the row": ("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": PATTERN,
                                                     "points": np.array([4096])}, "points"),
    "too many patterns": ("xrd_phase_patterns", {"two_theta_deg": np.linspace(20, 90, 100)[None],
                                                 "intensity": np.ones((1025, 100))}, "too many patterns"),
    "XRD options": ("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": PATTERN}, ""),  # set in the test
    "options not JSON": ("scattering_sorter_images", {"images": IMAGE, "options": _json(b"{saliency: yes")},
                         "options: not a UTF-8 JSON object"),
    "options not UTF-8": ("ebsd_indexer_patterns", {"patterns": EBSD, "options": _json(b"\xff\xfe")},
                          "options: not a UTF-8 JSON object"),
    "options a list": ("ebsd_indexer_patterns", {"patterns": EBSD, "options": _json([1, 2])},
                       "a JSON object is expected"),
    "unknown option": ("ebsd_indexer_patterns", {"patterns": EBSD, "options": _json({"refin": True})},
                       "unknown options 'refin'"),
    "version in options": ("scattering_sorter_images", {"images": IMAGE, "options": _json({"version": "1.0.0"})},
                           "Triton model version picks the registry version"),
    "unknown saliency label": ("scattering_sorter_images", {"images": IMAGE,
                                                            "options": _json({"saliency_label": "cats"})},
                               "saliency_label 'cats' is not a label"),
    "setup out of range": ("scattering_sorter_images", {"images": IMAGE, "options": _json({"distance_m": -1})},
                           "distance_m"),
    "neither images nor files": ("scattering_sorter_images", {"options": _json({})},
                                 "send either 'images' or 'files', not neither"),
    "constant images": ("scattering_sorter_images", {"images": np.ones((2, 64, 64), np.float32)},
                        "no image of the request can be sorted"),
    "NaN image": ("scattering_sorter_images", {"images": np.full((1, 64, 64), np.nan, np.float32)},
                  "no image of the request can be sorted"),
    "too many images": ("scattering_sorter_images", {"images": np.ones((257, 32, 32), np.float32)},
                        "too many images: at most 256"),
    "raw shape with images": ("scattering_sorter_images", {"images": IMAGE, "options": _json({"shape": "64x64",
                              "dtype": "int32"})}, "headerless raw files"),
    "raw bytes not whole frames": ("scattering_sorter_images", {"files": _json(b"\x01" * 6401),
                                   "options": _json({"shape": "40x40", "dtype": "int32"})}, "raw|frames|bytes"),
    "raw dtype unknown": ("scattering_sorter_images", {"files": _json(b"\x01" * 6400),
                          "options": _json({"shape": "40x40", "dtype": "complex128"})}, "dtype"),
    "file in no known format": ("scattering_sorter_images", {"files": _json(b"hello, not an image")},
                                "no accepted format|not .* accepted|accepted"),
    "EBSD patterns and files": ("ebsd_indexer_patterns", {"patterns": EBSD, "files": _json(b"x")},
                                "not both"),
    "EBSD NaN pattern": ("ebsd_indexer_patterns", {"patterns": np.full((1, 60, 60), np.nan, np.float32)},
                         r"patterns\[0\]"),
    "EBSD PC out of range": ("ebsd_indexer_patterns", {"patterns": EBSD, "pc": np.array([[0.9, 0.2, 0.5]])},
                             "outside the range the model supports"),
    "EBSD PC rows != patterns": ("ebsd_indexer_patterns", {"patterns": EBSD, "pc": np.full((2, 3), 0.425)},
                                 "pc|PC|projection"),
    "EBSD pattern too small": ("ebsd_indexer_patterns", {"patterns": np.ones((1, 8, 8), np.float32)}, "60"),
    "EBSD refine too many": ("ebsd_indexer_patterns", {"patterns": np.ones((257, 60, 60), np.float32),
                                                       "options": _json({"refine": True})},
                             "refine=true takes at most 256"),
}  # fmt: skip


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_hostile_inputs_get_clear_errors_and_triton_keeps_serving(triton: TritonEndpoints, protocol: str) -> None:
    url = f"grpc://{triton.grpc_target}" if protocol == "grpc" else triton.http_url
    transport = KServeTransport(url, timeout=120)
    try:
        for case, (model, inputs, message) in HOSTILE.items():
            if case == "XRD options":  # plots are for the novelty scorer only
                inputs = {**inputs, "options": _json({"plots": True})}
                message = "options: xrd_phase takes none"
            with pytest.raises(InvalidInputError, match=message) as caught:
                transport.infer(model, inputs, ["results_json"])
            assert "Traceback" not in caught.value.message, case
        assert triton.process.poll() is None
        answer, _ = transport.infer("xrd_phase_patterns", {"two_theta_deg": GRID, "intensity": PATTERN},
                                    ["results_json", "registry_version"])  # fmt: skip
        result = json.loads(answer["results_json"][0])  # a known phase, or (1.1.0) an explained abstention
        assert result["error"] is None and (result["phase"] or (result.get("abstained") and result.get("reason")))
        assert answer["registry_version"][0] == Registry(MODELS_DIR).active_version("xrd_phase").encode()
    finally:
        transport.close()


def test_sdk_over_triton_refuses_as_the_http_client_does(clients: dict[str, Any]) -> None:
    """A pattern the codec refuses: InvalidInputError naming it, on every path."""
    constant = {"two_theta_deg": np.linspace(20, 90, 2048), "intensity": np.full(2048, 3.0)}
    bad = [*xrd_patterns()[:2], constant]  # not 2 patterns: the HTTP client's as_pattern_list takes them for a pair
    for client in clients.values():
        with pytest.raises(InvalidInputError, match=r"1 of 3 pattern\(s\) cannot be used: patterns\[2\]"):
            client.classify_xrd(bad)
        with pytest.raises(InvalidInputError, match="outside the range"):
            client.index_ebsd(EBSD[0], pc=[0.9, 0.2, 0.5])
        with pytest.raises((InvalidInputError, ValueError)):
            client.sort_scattering(np.ones((64, 64)))


def test_typed_outputs_match_results_json(triton: TritonEndpoints) -> None:
    """The FP32 tensors of the main numbers hold the results' values (NaN where a result has none)."""
    transport = KServeTransport(f"grpc://{triton.grpc_target}", timeout=120)
    try:
        requests = {
            "xrd_phase_patterns": ({"two_theta_deg": GRID, "intensity": PATTERN}, ["probability", "coverage"]),
            "ebsd_indexer_patterns": ({"patterns": np.repeat(EBSD, 2, axis=0)}, ["quaternion", "confidence"]),
            "scattering_sorter_images": (
                {"images": IMAGE},
                ["valid_fraction", "q_span_inv_angstrom", "feature_distance"],
            ),
        }
        for model, (inputs, typed) in requests.items():
            answer, _ = transport.infer(model, inputs, ["results_json", *typed])
            results = [json.loads(item) for item in answer["results_json"]]
            for name in typed:
                expected = np.array([np.nan if r[name] is None else r[name] for r in results], dtype=np.float32)
                np.testing.assert_array_equal(answer[name], expected, err_msg=f"{model} {name}")
        assert np.isnan(answer["q_span_inv_angstrom"]).all()  # no setup given: the result says null
    finally:
        transport.close()


async def test_async_sdk_over_triton_is_the_twin_of_the_blocking_one(triton: TritonEndpoints) -> None:
    from matserve_client import AsyncClient

    patterns = xrd_patterns()[:3]
    image = np.random.default_rng(2).poisson(5.0, (64, 64)).astype(np.int32)
    with Client.grpc(triton.grpc_target, timeout=120) as client:
        expected = (client.classify_xrd(patterns), client.xrd_novelty(patterns), client.index_ebsd(EBSD),
                    client.sort_scattering(image, saliency=True))  # fmt: skip
    async with AsyncClient.grpc(triton.grpc_target, timeout=120) as client:
        answers = (await client.classify_xrd(patterns), await client.xrd_novelty(patterns),
                   await client.index_ebsd(EBSD), await client.sort_scattering(image, saliency=True))  # fmt: skip
    assert answers == expected


def test_scattering_file_parity(tmp_path: Path, clients: dict[str, Any]) -> None:
    """A two-frame TIFF sent as it is: decoded by the HTTP API's decoders on both servers, frames named after it."""
    import tifffile

    rng = np.random.default_rng(8)
    path = tmp_path / "frames.tif"
    frames = np.stack([rng.poisson(3.0, (128, 160)) + 40 * (rng.random((128, 160)) < 0.02) for _ in range(2)])
    tifffile.imwrite(path, frames.astype(np.uint16))
    answers = {name: client.sort_scattering(path, distance_m=1.5) for name, client in clients.items()}
    reference = answers.pop("bentoml-http")
    assert [r.source for r in reference] == [f"{path}[frame 0]", f"{path}[frame 1]"]
    assert_every_path_agrees(reference, answers)


def test_scattering_raw_file_parity(clients: dict[str, Any]) -> None:
    """A headerless raw frame with shape and dtype: the same answer on every path."""
    rng = np.random.default_rng(9)
    frame = (rng.poisson(4.0, (120, 150)) + 60 * (rng.random((120, 150)) < 0.03)).astype(">u2")
    answers = {name: client.sort_scattering(frame.tobytes(), shape=(120, 150), dtype=">u2")
               for name, client in clients.items()}  # fmt: skip
    reference = answers.pop("bentoml-http")
    assert reference[0].ok and reference[0].detector_shape == [120, 150]
    assert_every_path_agrees(reference, answers)
