"""Triton path, with the real ``tritonserver`` of the nvidia-pytriton wheel started by these tests.

Covers the repository generated from the registry, the local server command, identical answers from
every path (in-process ORT, Triton HTTP, Triton gRPC, BentoML -> Triton), the SDK's gRPC transport,
and Triton going away and coming back under a running API server. The ``repository`` and ``triton`` fixtures
(one tritonserver per session) are in ``tests/integration/conftest.py``; the domain models of every model
are compared with the other paths in ``test_triton_parity.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from matserve.codecs.formation_enthalpy import encode, parse_formula
from matserve.devserver import wait_until_ready
from matserve.errors import Unavailable
from matserve.registry import ModelVersion, Registry, write_card
from matserve.runtimes.onnxruntime import OnnxRuntime
from matserve.runtimes.triton import TritonRuntime
from matserve.triton.repository import build_repository
from matserve.triton.server import TritonEndpoints, running_triton, stop
from matserve_client import AsyncClient, Client, InvalidInputError, NotFoundError, ServiceUnavailableError
from matserve_client.kserve import KServeClient, KServeTransport
from tests.conftest import MATSERVE, MODELS_DIR, free_port, running_server

MODEL = "formation_enthalpy"
OUTPUTS = ["formation_enthalpy_ev_per_atom", "uncertainty_ev_per_atom"]
ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Al", "Ti", "Fe", "Ni", "Cu", "Zn", "La", "O", "S", "N", "Cl", "F", "Si"]
FORMULAS = [f"{a}{i}{b}{j}" for (a, b), i, j in itertools.product(itertools.combinations(ELEMENTS, 2), (1, 2), (1, 3))][
    :300
]
MIXED = ["NaCl", "Fe2O3", "Xx2", "O", "", "LiFePO4", "H2O1.5", "Na(Cl"]


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt`` with Triton's own protobuf schema (a syntax or field error fails here)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def api_on_triton(triton: TritonEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A matserve server delegating tensor work to the Triton above over gRPC."""
    log = tmp_path_factory.mktemp("api-triton") / "server.log"
    with running_server(MODELS_DIR, log, {"TRITON_URL": f"grpc://{triton.grpc_target}"}) as url:
        yield url


# -- repository generation ----------------------------------------------------------------------------------


def _two_version_registry(root: Path) -> Registry:
    """A registry with 1.0.0 (the committed model) and 1.1.0 (same graph), 1.0.0 active, plus a refused folder."""
    source = MODELS_DIR / MODEL / "1.0.0"
    for version in ("1.0.0", "1.1.0"):
        folder = root / MODEL / version
        folder.mkdir(parents=True)
        (folder / "model.onnx").hardlink_to(source / "model.onnx")
        card = json.loads((source / "card.json").read_text())
        write_card(folder, {**card, "version": version})
    broken = root / MODEL / "2.0.0"
    broken.mkdir()
    (broken / "card.json").write_text("{not json")
    (root / MODEL / "ACTIVE").write_text("1.0.0\n")
    return Registry(root)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_repository_configs_come_from_the_registry(tmp_path: Path, target: str) -> None:
    registry = _two_version_registry(tmp_path / "models")
    out = tmp_path / "repo"
    manifest = build_repository(registry, out, target=target)
    assert manifest["models"][MODEL]["versions"] == {"1": "1.0.0", "2": "1.1.0"}

    tensor = parse_config(out / MODEL / "config.pbtxt")
    card = registry.get(MODEL, "1.1.0").card
    assert tensor.max_batch_size == card["serving"]["max_batch_size"]
    assert tensor.HasField("dynamic_batching")
    assert list(tensor.version_policy.specific.versions) == [1, 2]
    assert [i.name for i in tensor.input] == [t["name"] for t in card["inputs"]]
    assert list(tensor.input[0].dims) == [86]
    assert [o.name for o in tensor.output] == OUTPUTS
    if target == "gpu":
        assert tensor.backend == "onnxruntime"
        assert tensor.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert not (out / MODEL / "1" / "model.py").exists()
    else:
        assert tensor.backend == "python"
        assert tensor.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert (out / MODEL / "1" / "model.py").is_file()
    versions = json.loads(tensor.parameters["matserve_versions"].string_value)
    assert {n: e["version"] for n, e in versions.items()} == {"1": "1.0.0", "2": "1.1.0"}
    for number, entry in versions.items():
        assert entry["sha256"] == registry.get(MODEL, entry["version"]).card["files"]["model.onnx"]["sha256"]
        assert (out / MODEL / number / "model.onnx").read_bytes() == registry.get(MODEL, entry["version"]).file(
            "model.onnx"
        ).read_bytes()
    assert tensor.parameters["matserve_active_version"].string_value == "1"  # ACTIVE says 1.0.0

    domain = parse_config(out / f"{MODEL}_formulas" / "config.pbtxt")
    assert domain.backend == "python"
    assert domain.input[0].data_type == model_config_pb2.TYPE_STRING
    assert domain.parameters["tensor_model"].string_value == MODEL
    assert json.loads((out / f"{MODEL}_formulas" / "2" / "card.json").read_text())["version"] == "1.1.0"
    assert not any("2.0.0" in v for v in manifest["models"][MODEL]["versions"].values())  # refused folder left out


def test_build_repo_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([str(MATSERVE), "triton", "build-repo", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "refusing to overwrite" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_build_repo_cli_rebuilds_its_own_output(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    for _ in range(2):  # the second run replaces the first repository
        result = subprocess.run(
            [str(MATSERVE), "triton", "build-repo", str(out), "--target", "gpu"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    assert "formation_enthalpy: Triton versions 1=1.0.0" in result.stdout
    assert parse_config(out / MODEL / "config.pbtxt").backend == "onnxruntime"


# -- one answer, every path ---------------------------------------------------------------------------------


def test_identical_answers_from_every_path(triton: TritonEndpoints, api_on_triton: str, server_url: str) -> None:
    registry = Registry(MODELS_DIR)
    model = registry.get(MODEL)
    features = encode([parse_formula(f) for f in FORMULAS])
    reference = OnnxRuntime(intra_op_threads=1).run(model, {"element_fractions": features})
    expected = reference[OUTPUTS[0]].reshape(-1)

    answers: dict[str, np.ndarray] = {}
    for name, url in (("triton-http", triton.http_url), ("triton-grpc", f"grpc://{triton.grpc_target}")):
        transport = KServeTransport(url)
        outputs, answered = transport.infer(MODEL, {"element_fractions": features}, OUTPUTS, version="1")
        assert answered == "1"
        answers[name] = outputs[OUTPUTS[0]].reshape(-1)
        np.testing.assert_allclose(outputs[OUTPUTS[1]], reference[OUTPUTS[1]], atol=1e-5, rtol=0)
        transport.close()
    with Client.grpc(triton.grpc_target) as client:
        answers["sdk-grpc-domain"] = np.array(
            [r.formation_enthalpy_ev_per_atom for r in client.formation_enthalpy(FORMULAS)]
        )
    with KServeClient(triton.http_url) as client:
        answers["sdk-triton-http-domain"] = np.array(
            [r.formation_enthalpy_ev_per_atom for r in client.formation_enthalpy(FORMULAS)]
        )
    for name, url in (("bentoml-triton", api_on_triton), ("bentoml-in-process", server_url)):
        with Client(url) as client:
            answers[name] = np.array([r.formation_enthalpy_ev_per_atom for r in client.formation_enthalpy(FORMULAS)])
    for name, values in answers.items():
        np.testing.assert_allclose(values, expected, atol=1e-5, rtol=0, err_msg=name)


def test_xrd_models_answer_the_same_on_triton(triton: TritonEndpoints, api_on_triton: str, server_url: str) -> None:
    """The XRD graphs (three outputs, one of them a scalar per pattern) run on Triton as in-process."""
    registry = Registry(MODELS_DIR)
    patterns = np.random.default_rng(3).random((40, 2048)).astype(np.float32) ** 8
    for name, outputs in (("xrd_phase", ["phase_probabilities"]),
                          ("xrd_novelty", ["latent_mean", "reconstruction", "reconstruction_error"])):  # fmt: skip
        reference = OnnxRuntime(intra_op_threads=1).run(registry.get(name), {"pattern": patterns})
        for url in (triton.http_url, f"grpc://{triton.grpc_target}"):
            transport = KServeTransport(url)
            got, _ = transport.infer(name, {"pattern": patterns}, outputs, version="1")
            transport.close()
            for output in outputs:
                np.testing.assert_allclose(got[output].reshape(reference[output].shape), reference[output],
                                           atol=1e-5, rtol=0, err_msg=f"{name} {output} {url}")  # fmt: skip
    body = {"patterns": [{"two_theta_deg": np.linspace(20, 90, 2048).tolist(), "intensity": p.tolist()}
                         for p in patterns[:5]]}  # fmt: skip
    for path in ("/v1/xrd/phase", "/v1/xrd/novelty"):
        via_triton = httpx.post(api_on_triton + path, json=body, timeout=60)
        in_process = httpx.post(server_url + path, json=body, timeout=60)
        assert via_triton.status_code == in_process.status_code == 200, via_triton.text
        for a, b in zip(via_triton.json()["results"], in_process.json()["results"], strict=True):
            for key in ("phase", "nearest_known_phase", "is_novel"):
                assert a.get(key) == b.get(key)
            for key in ("probability", "reconstruction_error", "probability_unknown", "novelty_score"):
                if key in a:
                    assert (a[key] is None) == (b[key] is None), key  # null when the phase answer abstains
                    if a[key] is not None:
                        assert abs(a[key] - b[key]) < 1e-5
            assert a.get("abstained") == b.get("abstained") and a.get("phases") == b.get("phases")


def test_ebsd_indexer_versions_with_other_tensors_are_their_own_triton_models(repository: Path) -> None:
    """2.0.0 (resampled patterns in, the best dictionary matches out) is ``ebsd_indexer``; 1.0.0 (normalised
    patterns in, the 15 x 15 axis map out) has another interface, so it is ``ebsd_indexer__1.0.0`` (one config per
    Triton model); decoding to orientations stays in the API for both."""
    config = parse_config(repository / "ebsd_indexer" / "config.pbtxt")
    assert [(i.name, list(i.dims), i.data_type) for i in config.input] == [
        ("patterns", [60, 60], model_config_pb2.TYPE_FP32)]  # fmt: skip
    assert [(o.name, list(o.dims)) for o in config.output] == [("candidate_quaternions", [4, 4]),
                                                               ("candidate_similarity", [4])]  # fmt: skip
    assert list(config.version_policy.specific.versions) == [2]
    older = parse_config(repository / "ebsd_indexer__1.0.0" / "config.pbtxt")
    assert [(o.name, list(o.dims)) for o in older.output] == [("axis_map", [15, 15])]
    assert list(older.version_policy.specific.versions) == [1]
    mapping = json.loads(config.parameters["matserve_versions"].string_value)
    assert {n: (e["version"], e["model"]) for n, e in mapping.items()} == {
        "1": ("1.0.0", "ebsd_indexer__1.0.0"), "2": ("2.0.0", "ebsd_indexer")}  # fmt: skip


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_ebsd_indexer_answers_the_same_on_triton(
    triton: TritonEndpoints, api_on_triton: str, server_url: str, version: str
) -> None:
    """Each EBSD graph on Triton HTTP and gRPC against in-process ONNX Runtime; and the API's EBSD endpoint
    through Triton against the in-process API, for that version."""
    from matserve.codecs.ebsd import NOMINAL_PC, normalize_patterns
    from matserve.codecs.orientation import disorientation_deg

    rng = np.random.default_rng(5)
    model = Registry(MODELS_DIR).get("ebsd_indexer", version)
    patterns = rng.random((24, 60, 60)).astype(np.float32) * 255
    inputs = {"patterns": normalize_patterns(patterns) if version == "1.0.0" else patterns}
    reference = OnnxRuntime(intra_op_threads=1).run(model, inputs)
    names = [o["name"] for o in model.tensor_specs("outputs")]
    triton_name = "ebsd_indexer__1.0.0" if version == "1.0.0" else "ebsd_indexer"
    for url in (triton.http_url, f"grpc://{triton.grpc_target}"):
        transport = KServeTransport(url)
        got, _ = transport.infer(triton_name, inputs, names, version="1" if version == "1.0.0" else "2")
        transport.close()
        for name in names:
            np.testing.assert_allclose(got[name].reshape(reference[name].shape), reference[name], atol=1e-5, rtol=0,
                                       err_msg=f"ebsd_indexer {version} {name} {url}")  # fmt: skip
    body = {"patterns": (rng.random((5, 60, 60)) * 255).round().tolist(), "pc": list(NOMINAL_PC), "version": version}
    via_triton = httpx.post(api_on_triton + "/v1/ebsd/index", json=body, timeout=60)
    in_process = httpx.post(server_url + "/v1/ebsd/index", json=body, timeout=60)
    assert via_triton.status_code == in_process.status_code == 200, via_triton.text
    assert via_triton.json()["version"] == in_process.json()["version"] == version
    for a, b in zip(via_triton.json()["results"], in_process.json()["results"], strict=True):
        assert disorientation_deg(np.array([a["quaternion"]]), np.array([b["quaternion"]]))[0] < 1e-3
        assert abs(a["expected_error_deg"] - b["expected_error_deg"]) < 1e-4


def test_scattering_sorter_answers_the_same_on_triton(
    repository: Path, triton: TritonEndpoints, api_on_triton: str, server_url: str
) -> None:
    """The sorter's outputs (Grad-CAM maps and feature_distance included) on Triton HTTP and gRPC against in-process
    ONNX Runtime, within 1e-5; and the API's sort endpoint through Triton against the in-process API."""
    from matserve.codecs.scattering import Setup, encode_image, setup_features

    config = parse_config(repository / "scattering_sorter" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [128, 128, 2]), ("setup", [2])]
    older = parse_config(repository / "scattering_sorter__1.0.0" / "config.pbtxt")  # 1.0.0, 1.1.0: no setup input
    assert [(i.name, list(i.dims)) for i in older.input] == [("images", [128, 128, 2])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("technique_probabilities", [4]), ("geometry_probabilities", [2]), ("feature_probabilities", [5]),
        ("class_activation_maps", [16, 16, 11]), ("feature_distance", [1])]  # fmt: skip
    rng = np.random.default_rng(6)
    images = [(rng.poisson(5.0, (195, 487)) + 50 * (rng.random((195, 487)) < 0.01)).astype(np.int32) for _ in range(3)]
    q_spans = [Setup(0.25, 1.0, 172e-6).q_span_inv_angstrom(image.shape) for image in images[:2]] + [None]
    inputs = {"images": np.stack([encode_image(image).tensor for image in images]),
              "setup": np.stack([setup_features(q) for q in q_spans])}  # fmt: skip
    version = Registry(MODELS_DIR).get("scattering_sorter")
    reference = OnnxRuntime(intra_op_threads=1).run(version, inputs)
    names = [o.name for o in config.output]
    for url in (triton.http_url, f"grpc://{triton.grpc_target}"):
        transport = KServeTransport(url)
        numbers, _ = transport.version_map("scattering_sorter", refresh=True)  # Triton's integer for the newest
        number = next(n for n, entry in numbers.items() if entry["version"] == version.version)
        got, _ = transport.infer("scattering_sorter", inputs, names, version=number)
        transport.close()
        for name in names:
            np.testing.assert_allclose(got[name].reshape(reference[name].shape), reference[name], atol=1e-5, rtol=0,
                                       err_msg=f"scattering_sorter {name} {url}")  # fmt: skip
    body = {"images": [image.tolist() for image in images[:2]], "saliency": True, "distance_m": 0.25,
            "wavelength_angstrom": 1.0, "pixel_size_um": 172}  # fmt: skip
    via_triton = httpx.post(api_on_triton + "/v1/scattering/sort", json=body, timeout=60)
    in_process = httpx.post(server_url + "/v1/scattering/sort", json=body, timeout=60)
    assert via_triton.status_code == in_process.status_code == 200, via_triton.text
    for a, b in zip(via_triton.json()["results"], in_process.json()["results"], strict=True):
        for key in ("technique", "geometry", "features", "saliency_label"):
            assert a[key] == b[key], key
        for key in ("technique_probabilities", "geometry_probabilities", "feature_probabilities"):
            np.testing.assert_allclose(list(a[key].values()), list(b[key].values()), atol=1e-5)


def test_grpc_sdk_matches_http_api_item_by_item(triton: TritonEndpoints, server_url: str) -> None:
    with Client(server_url) as http_client, Client.grpc(triton.grpc_target) as grpc_client:
        over_http = http_client.formation_enthalpy(MIXED)
        over_grpc = grpc_client.formation_enthalpy(MIXED)
    assert [r.error for r in over_grpc] == [r.error for r in over_http]
    assert [r.normalized_formula for r in over_grpc] == [r.normalized_formula for r in over_http]
    assert [(r.model, r.version) for r in over_grpc] == [(MODEL, "1.0.0")] * len(MIXED)
    assert over_grpc[2].error and "Xx" in over_grpc[2].error
    for a, b in zip(over_http, over_grpc, strict=True):
        if a.formation_enthalpy_ev_per_atom is None:
            assert b.formation_enthalpy_ev_per_atom is None
        else:
            assert abs(a.formation_enthalpy_ev_per_atom - b.formation_enthalpy_ev_per_atom) <= 1e-5


async def test_async_grpc_sdk_is_the_twin_of_the_blocking_one(triton: TritonEndpoints) -> None:
    with Client.grpc(triton.grpc_target) as client:
        expected = client.formation_enthalpy(MIXED)
    async with AsyncClient.grpc(triton.grpc_target) as client:
        assert await client.formation_enthalpy(MIXED) == expected


def test_grpc_sdk_pins_registry_versions(triton: TritonEndpoints) -> None:
    with Client.grpc(triton.grpc_target) as client:
        assert client.formation_enthalpy(["NaCl"], version="1.0.0")[0].version == "1.0.0"
        with pytest.raises(NotFoundError, match=r"no version '9\.9\.9'"):
            client.formation_enthalpy(["NaCl"], version="9.9.9")


def test_bad_input_over_grpc_gets_clear_errors_and_triton_keeps_serving(triton: TritonEndpoints) -> None:
    transport = KServeTransport(f"grpc://{triton.grpc_target}")
    domain = f"{MODEL}_formulas"
    outputs = ["normalized_formula", "error"]
    items = np.array([b"NaCl", b"\xff\xfe", ("Na" * 200).encode(), b""], dtype=np.object_)
    answer, _ = transport.infer(domain, {"formulas": items}, outputs, version="1")
    errors = [e.decode() for e in answer["error"]]
    assert errors[0] == "" and answer["normalized_formula"][0] == b"NaCl"
    assert errors[1].startswith("unparseable formula") and "e.g. 'Fe2O3'" in errors[1]  # not UTF-8
    assert "at most 256" in errors[2]
    assert errors[3] == "formula is empty"
    with pytest.raises(InvalidInputError, match="formulas"):  # wrong datatype: refused by Triton before the model
        transport.infer(domain, {"formulas": np.zeros(3, np.float32)}, outputs, version="1")
    with pytest.raises(InvalidInputError):  # wrong input name
        transport.infer(domain, {"formula": items[:1]}, outputs, version="1")
    with pytest.raises(InvalidInputError):  # wrong feature width for the tensor model
        transport.infer(MODEL, {"element_fractions": np.zeros((2, 85), np.float32)}, OUTPUTS, version="1")
    with Client.grpc(triton.grpc_target) as client:
        assert client.formation_enthalpy(["NaCl"])[0].ok  # still serving
    transport.close()


def test_api_on_triton_names_model_and_version(api_on_triton: str) -> None:
    response = httpx.post(f"{api_on_triton}/v1/formation-enthalpy", json={"formulas": ["NaCl", "Xx"]})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == (MODEL, "1.0.0")
    assert body["results"][1]["error"]


def test_runtime_refuses_a_different_build_of_the_same_version(triton: TritonEndpoints) -> None:
    model = Registry(MODELS_DIR).get(MODEL)
    card = json.loads(json.dumps(model.card))
    card["files"]["model.onnx"]["sha256"] = "0" * 64
    impostor = ModelVersion(name=model.name, version=model.version, path=model.path, card=card)
    runtime = TritonRuntime(f"grpc://{triton.grpc_target}")
    with pytest.raises(Unavailable, match="different build"):
        runtime.run(impostor, {"element_fractions": np.zeros((1, 86), np.float32)})


# -- Triton away and back -----------------------------------------------------------------------------------


def _metric(url: str, name: str, label: str = "") -> float:
    """Sum of a Prometheus counter's samples (whose labels contain ``label``) on ``url``."""
    total = 0.0
    for line in httpx.get(url).text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_unreachable_triton_without_fallback_is_a_fast_503(tmp_path: Path, scheme: str) -> None:
    dead = f"{scheme}://127.0.0.1:{free_port()}"
    env = {"TRITON_URL": dead, "MATSERVE_TRITON_FALLBACK": "none"}
    with running_server(MODELS_DIR, tmp_path / "server.log", env) as url:
        started = time.perf_counter()
        response = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}, timeout=10)
        elapsed = time.perf_counter() - started
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "unavailable"
        assert "Triton" in response.json()["error"]["message"] and "unreachable" in response.json()["error"]["message"]
        assert elapsed < 1.0, elapsed
        # The server keeps serving: listings, validation, and items that need no tensors.
        assert httpx.get(f"{url}/v1/models").json()["runtime"]["fallback"] is None
        assert httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": "NaCl"}).status_code == 422
        element = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["Fe"]})
        assert element.status_code == 200 and element.json()["results"][0]["formation_enthalpy_ev_per_atom"] == 0
        with Client(url, retries=0) as client, pytest.raises(ServiceUnavailableError):
            client.formation_enthalpy(["NaCl"])


def test_unreachable_triton_falls_back_to_in_process_ort(tmp_path: Path, server_url: str) -> None:
    dead = f"grpc://127.0.0.1:{free_port()}"
    with running_server(MODELS_DIR, tmp_path / "server.log", {"TRITON_URL": dead, "MATSERVE_CACHE": "0"}) as url:
        for formulas in (["NaCl"], FORMULAS[:50], ["LiFePO4"]):
            started = time.perf_counter()
            response = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": formulas}, timeout=10)
            assert response.status_code == 200, response.text
            assert time.perf_counter() - started < 1.0
            expected = httpx.post(f"{server_url}/v1/formation-enthalpy", json={"formulas": formulas}).json()
            assert response.json() == expected  # same model, same version, same numbers
        assert _metric(f"{url}/metrics", "matserve_runtime_fallback_total", 'model="formation_enthalpy"') == 3
        runtime = httpx.get(f"{url}/v1/models").json()["runtime"]
        assert runtime == {"name": "triton", "url": dead, "fallback": "onnxruntime", "triton_reachable": False}


@pytest.mark.parametrize("fallback", ["ort", "none"])
def test_triton_killed_and_restarted_under_a_running_api(repository: Path, tmp_path: Path, fallback: str) -> None:
    """gRPC is the case that needs care: the channel must reconnect (its default backoff grows to 120 s)."""
    ports = (free_port(), free_port(), free_port())
    log = tmp_path / "triton.log"
    metrics_url = f"http://127.0.0.1:{ports[2]}/metrics"
    with running_triton(repository, log, ports=ports) as first:
        env = {"TRITON_URL": f"grpc://127.0.0.1:{ports[1]}", "MATSERVE_CACHE": "0",  # every request needs tensors
               "MATSERVE_TRITON_FALLBACK": fallback, "MATSERVE_TRITON_RETRY_AFTER_S": "0.5"}  # fmt: skip
        with running_server(MODELS_DIR, tmp_path / "server.log", env) as api:
            ok = httpx.post(f"{api}/v1/formation-enthalpy", json={"formulas": ["NaCl"]})
            assert ok.status_code == 200
            before = ok.json()["results"][0]["formation_enthalpy_ev_per_atom"]
            assert _metric(metrics_url, "nv_inference_request_success", 'model="formation_enthalpy"') >= 1

            first.process.send_signal(signal.SIGKILL)  # not a clean stop
            first.process.wait()
            for _ in range(5):
                started = time.perf_counter()
                down = httpx.post(f"{api}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}, timeout=10)
                assert time.perf_counter() - started < 1.0
                if fallback == "ort":
                    assert down.status_code == 200, down.text
                    assert down.json()["results"][0]["formation_enthalpy_ev_per_atom"] == pytest.approx(
                        before, abs=1e-5
                    )
                else:
                    assert down.status_code == 503, down.text
                    assert "unreachable" in down.json()["error"]["message"]
            if fallback == "ort":
                assert _metric(f"{api}/metrics", "matserve_runtime_fallback_total") == 5

            with running_triton(repository, log, ports=ports):
                deadline = time.monotonic() + 20
                while True:  # the API goes back to Triton by itself, no restart
                    again = httpx.post(f"{api}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}, timeout=10)
                    served = _metric(metrics_url, "nv_inference_request_success", 'model="formation_enthalpy"')
                    if (again.status_code == 200 and served >= 1) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert again.status_code == 200, again.text
                assert served >= 1  # the new Triton process answered
                assert again.json()["results"][0]["formation_enthalpy_ev_per_atom"] == pytest.approx(before, abs=1e-5)
                assert httpx.get(f"{api}/v1/models").json()["runtime"]["triton_reachable"] is True


def test_triton_serve_command_builds_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [
                str(MATSERVE),
                "triton",
                "serve",
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--metrics-port",
                str(metrics_port),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MATSERVE_MODELS_DIR": str(MODELS_DIR)},
            start_new_session=True,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", process, timeout_s=120, log_path=log)
        with Client.grpc(f"127.0.0.1:{grpc_port}") as client:
            assert client.formation_enthalpy(["NaCl"])[0].ok
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'nv_inference_request_success{model="formation_enthalpy_formulas"' in metrics
        # the command announces readiness from its own poll of /v2/health/ready, which may come a moment after ours
        deadline = time.monotonic() + 30
        while "Triton ready" not in log.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        stop(process)
