"""``POST /v1/scattering/sort`` end to end (real server, committed model), raw HTTP, the SDK and the CLI.

The committed model may be an untrained placeholder: these tests check structure, probabilities, that every
format and path gives the same answer for the same image, errors and their statuses, never what is predicted.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from matserve.registry import Registry
from matserve_client import (
    AsyncClient,
    Client,
    ClientRequestError,
    InvalidInputError,
    NotFoundError,
    ScatteringResult,
)
from tests.conftest import MODELS_DIR
from tests.unit.test_codec_scattering import (
    PILATUS_100K_Q_SPAN,
    eiger_h5,
    fabio_file,
    npy,
    pilatus_header,
    pilatus_image,
    png,
    ring_image,
    tiff,
)

SORT = "/v1/scattering/sort"
LABELS = {"technique": ["saxs", "waxs", "gisaxs", "giwaxs"], "geometry": ["transmission", "grazing"],
          "features": ["rings", "arcs", "rods", "bragg_peaks", "diffuse_halo"]}  # fmt: skip
SERVED_CARD = Registry(MODELS_DIR).get("scattering_sorter").card  # the served version
FEATURE_THRESHOLDS = SERVED_CARD["feature_thresholds"]
CONFIDENCE_THRESHOLDS = SERVED_CARD["technique_confidence_thresholds"]


def post(url: str, body: object = None, content: bytes | None = None, content_type: str = "application/json",
         **kwargs: object) -> httpx.Response:  # fmt: skip
    data = content if content is not None else json.dumps(body).encode()
    headers = {"content-type": content_type, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(url, content=data, headers=headers, timeout=120, **kwargs)  # type: ignore[arg-type]


def check_result(result: dict, source: str, shape: list[int]) -> None:
    """The structure and probability conventions of one sorted image."""
    assert result["source"] == source and result["error"] is None and result["detector_shape"] == shape
    for head in ("technique", "geometry"):
        probabilities = result[f"{head}_probabilities"]
        assert list(probabilities) == LABELS[head] and sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert result[head] == max(probabilities, key=probabilities.get)
    top = max(result["technique_probabilities"].values())
    threshold = CONFIDENCE_THRESHOLDS["setup_known" if result["q_span_inv_angstrom"] is not None else "setup_unknown"]
    assert result["technique_confident"] == (top >= threshold) or abs(top - threshold) < 1e-6  # 6-decimal rounding
    features = result["feature_probabilities"]
    assert list(features) == LABELS["features"] and all(0 <= p <= 1 for p in features.values())
    assert result["features"] == [name for name, p in features.items() if p >= FEATURE_THRESHOLDS[name]]
    assert 0 < result["valid_fraction"] <= 1


def same_answer(a: dict, b: dict) -> None:
    for key in ("technique_probabilities", "geometry_probabilities", "feature_probabilities"):
        np.testing.assert_allclose(list(a[key].values()), list(b[key].values()), atol=2e-6, err_msg=key)


def test_every_format_and_body_kind_gives_the_same_answer(server_url: str, tmp_path: Path) -> None:
    image = pilatus_image()
    url = server_url + SORT
    reference = post(url, content=npy(image), content_type="application/x-npy")
    assert reference.status_code == 200, reference.text
    body = reference.json()
    assert body["model"] == "scattering_sorter" and body["version"] and len(body["results"]) == 1
    expected = body["results"][0]
    check_result(expected, "body", [195, 487])
    assert expected["saliency_png_base64"] is None and expected["valid_fraction"] < 1  # the gap is masked
    named = post(url, content=tiff(image), content_type="image/tiff",
                 headers={"content-disposition": 'attachment; filename="pilatus_0001.tif"'})  # fmt: skip
    check_result(named.json()["results"][0], "pilatus_0001.tif", [195, 487])
    same_answer(named.json()["results"][0], expected)
    for content, content_type in ((fabio_file("cbf", [image], tmp_path), "application/octet-stream"),
                                  (eiger_h5(image[None].astype(np.int32), None, True), "application/x-hdf5")):  # fmt: skip
        response = post(url, content=content, content_type=content_type)
        assert response.status_code == 200, response.text
        same_answer(response.json()["results"][0], expected)
    as_json = post(url, {"image": image.tolist()})
    assert as_json.status_code == 200, as_json.text
    check_result(as_json.json()["results"][0], "image", [195, 487])
    same_answer(as_json.json()["results"][0], expected)

    # a 16-bit PNG, an EDF of two float frames, JSON images with a mask, and multipart with a mask part
    counts = ring_image(dtype=np.uint16)
    from_png = post(url, content=png(counts), content_type="image/png").json()["results"][0]
    same_answer(from_png, post(url, content=npy(counts), content_type="application/x-npy").json()["results"][0])
    frames = [ring_image(dtype=np.float32, seed=k) for k in range(2)]
    edf = post(url, content=fabio_file("edf", frames, tmp_path), content_type="application/octet-stream")
    assert [r["source"] for r in edf.json()["results"]] == ["body[frame 0]", "body[frame 1]"]
    mask = np.zeros(image.shape, np.uint8)
    mask[:, 300:] = 1
    masked = post(url, {"images": [image.tolist(), image.tolist()], "mask": mask.tolist()}).json()["results"]
    assert [r["source"] for r in masked] == ["images[0]", "images[1]"]
    assert masked[0]["valid_fraction"] < expected["valid_fraction"] - 0.3
    files = [("files", ("a.cbf", fabio_file("cbf", [image], tmp_path), "application/octet-stream")),
             ("files", ("b.tif", tiff(np.stack([image, image])), "image/tiff")),
             ("mask", ("mask.npy", npy(mask), "application/x-npy"))]  # fmt: skip
    multipart = httpx.post(url, files=files, data={"saliency": "false"}, timeout=60)
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    assert [r["source"] for r in results] == ["a.cbf", "b.tif[frame 0]", "b.tif[frame 1]"]
    for result in results:
        same_answer(result, masked[0])


def test_saliency_pngs(server_url: str) -> None:
    image = pilatus_image()
    response = post(
        server_url + SORT, content=npy(image), content_type="application/x-npy", params={"saliency": "true"}
    )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["saliency_label"] == result["technique"]
    picture = Image.open(io.BytesIO(base64.b64decode(result["saliency_png_base64"])))
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (4 * 122, 4 * 49)  # letterbox x 4
    chosen = post(server_url + SORT, {"image": ring_image((256, 256)).tolist(), "saliency_label": "rings"})
    result = chosen.json()["results"][0]
    assert chosen.status_code == 200 and result["saliency_label"] == "rings"
    assert Image.open(io.BytesIO(base64.b64decode(result["saliency_png_base64"]))).size == (512, 512)


def test_one_bad_frame_among_good_ones_is_reported_in_its_result(server_url: str) -> None:
    stack = np.stack([ring_image(dtype=np.uint16), np.zeros((195, 487), np.uint16), ring_image(dtype=np.uint16)])
    response = post(server_url + SORT, content=tiff(stack), content_type="image/tiff")
    assert response.status_code == 200, response.text
    first, empty, last = response.json()["results"]
    assert empty["source"] == "body[frame 1]" and "constant" in empty["error"] and empty["technique"] is None
    assert first["error"] is None and last["error"] is None
    files = [("files", ("good.npy", npy(pilatus_image()), "application/x-npy")),
             ("files", ("notes.txt", b"not an image", "text/plain"))]  # fmt: skip
    mixed = httpx.post(server_url + SORT, files=files, timeout=60).json()["results"]
    assert mixed[0]["error"] is None and mixed[1]["source"] == "notes.txt"
    assert "accepted: TIFF" in mixed[1]["error"]


def _bad_cases() -> list[tuple[str, dict, int, str]]:
    good = pilatus_image()
    many = np.stack([ring_image((32, 32), np.uint16, seed=k) for k in range(257)])
    return [
        ("unknown bytes", {"content": b"<html>hello</html>", "content_type": "application/octet-stream"}, 415,
         "not a detector image file in an accepted format (it starts with b'<html>hello</htm'); accepted: TIFF"),
        ("wrong content type", {"content": b"1 2 3", "content_type": "text/plain"}, 415,
         "accepted here: application/json, image/tiff, image/png"),
        ("1D JSON", {"body": {"image": [1, 2, 3]}}, 422, "image: expected one 2D detector image"),
        ("3D JSON", {"body": {"image": [[[1, 2]] * 40] * 40}}, 422, "got a 3D array"),
        ("3D npy", {"content": npy(np.ones((3, 64, 64), np.int32)), "content_type": "application/x-npy"}, 422,
         "1D and 3D arrays are refused"),
        ("constant", {"content": npy(np.full((195, 487), 9, np.int32)), "content_type": "application/x-npy"}, 422,
         "no image of the request can be sorted (1 of 1 failed): body: the image is constant"),
        ("empty", {"body": {"images": [np.zeros((64, 64), int).tolist()] * 2}}, 422,
         "all of images[0] to images[1]: the image is constant"),
        ("all gaps", {"content": npy(np.full((64, 64), -1, np.int32)), "content_type": "application/x-npy"}, 422,
         "only 0 valid pixels"),
        ("too small", {"body": {"image": [[1, 2, 3]] * 3}}, 422, "outside the accepted size"),
        ("ragged", {"body": {"image": [[1, 2, 3], [1, 2]]}}, 422, "rows have different lengths"),
        ("colour png", {"content": png(np.zeros((64, 64, 3), np.uint8)), "content_type": "image/png"}, 422,
         "RGB PNG; a detector image is greyscale"),
        ("truncated tiff", {"content": tiff(good)[:5000], "content_type": "image/tiff"}, 422, "cannot be read as TIFF"),
        ("too many frames", {"content": tiff(many), "content_type": "image/tiff"}, 413, "at most 256 per request"),
        ("invalid json", {"content": b'{"image": [[1, 2', "content_type": "application/json"}, 400, "not valid JSON"),
        ("image and images", {"body": {"image": good.tolist(), "images": [good.tolist()]}}, 422, "not both"),
        ("unknown option", {"content": npy(good), "content_type": "application/x-npy", "params": {"salency": "1"}},
         422, "unknown query parameter 'salency'; accepted: saliency, saliency_label, version"),
        ("bad saliency label", {"body": {"image": good.tolist(), "saliency_label": "powder"}}, 422,
         "accepted: saxs, waxs, gisaxs, giwaxs, transmission, grazing, rings, arcs, rods, bragg_peaks, diffuse_halo"),
        ("option twice", {"body": {"image": good.tolist(), "saliency": True}, "params": {"saliency": "true"}}, 422,
         "given both in the body and in the query"),
        ("unknown version", {"content": npy(good), "content_type": "application/x-npy", "params": {"version": "9.9"}},
         404, "9.9"),
        ("master file", {"content": _master_file(), "content_type": "application/x-hdf5"}, 422,
         "/entry/data/data_000001 is an external link (a master file? send the data file(s) instead"),
        ("distance out of range", {"content": npy(good), "content_type": "application/x-npy",
                                   "params": {"distance_m": "0"}}, 422, "distance_m"),
        ("wavelength not a number", {"body": {"image": good.tolist(), "wavelength_angstrom": "blue"}}, 422,
         "wavelength_angstrom"),
        ("distance in mm", {"content": npy(good), "content_type": "application/x-npy",
                            "params": {"distance_m": "250"}}, 422, "distance_m"),
        ("pixel size in metres", {"content": npy(good), "content_type": "application/x-npy",
                                  "params": {"pixel_size_um": "172e-6"}}, 422, "pixel_size_um"),
        ("NaN wavelength", {"content": npy(good), "content_type": "application/x-npy",
                            "params": {"wavelength_angstrom": "nan"}}, 422, "wavelength_angstrom"),
    ]  # fmt: skip


def _master_file() -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_group("entry/data")["data_000001"] = h5py.ExternalLink(
            "series_data_000001.h5", "/entry/data/data"
        )
    return buffer.getvalue()


def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server_url: str) -> None:
    for name, case, status, fragment in _bad_cases():
        response = post(server_url + SORT, case.get("body"), case.get("content"),
                        case.get("content_type", "application/json"), params=case.get("params"))  # fmt: skip
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert fragment in error["message"], (name, error)
        assert set(error) == {"type", "message"}
    files = [("files", ("a.txt", b"hello", "text/plain")), ("files", ("b.bin", b"\x00" * 64, "application/x-npy"))]
    unreadable = httpx.post(server_url + SORT, files=files, timeout=60)
    assert unreadable.status_code == 415 and "a.txt:" in unreadable.json()["error"]["message"]
    ok = post(server_url + SORT, {"image": pilatus_image().tolist()})
    assert ok.status_code == 200, ok.text


def test_the_setup_comes_from_the_file_header_and_the_request_overrides_it(server_url: str, tmp_path: Path) -> None:
    from fabio import cbfimage

    image = pilatus_image()
    cbf = cbfimage.CbfImage(data=image)
    cbf.header["_array_data.header_convention"] = "PILATUS_1.2"
    cbf.header["_array_data.header_contents"] = pilatus_header()
    cbf.write(str(tmp_path / "a.cbf"))
    content = (tmp_path / "a.cbf").read_bytes()
    from_header = post(server_url + SORT, content=content, content_type="application/octet-stream").json()["results"][0]
    assert from_header["setup_source"] == (
        "distance_m=header:CBF Detector_distance (m); wavelength_angstrom=header:CBF Wavelength (A); "
        "pixel_size_m=header:CBF Pixel_size (m)"
    )
    assert from_header["q_span_inv_angstrom"] == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5)
    farther = post(server_url + SORT, content=content, content_type="application/octet-stream",
                   params={"distance_m": "5"}).json()["results"][0]  # fmt: skip
    assert farther["q_span_inv_angstrom"] < 0.2
    assert farther["setup_source"] == (
        "distance_m=request; wavelength_angstrom=header:CBF Wavelength (A); pixel_size_m=header:CBF Pixel_size (m)"
    )
    setup = {"distance_m": 0.25, "wavelength_angstrom": 1.0, "pixel_size_um": 172}
    from_json = post(server_url + SORT, {"image": image.tolist(), **setup}).json()["results"][0]
    form = httpx.post(server_url + SORT, files=[("files", ("a.npy", npy(image), "application/x-npy"))],
                      data={k: str(v) for k, v in setup.items()}, timeout=60).json()["results"][0]  # fmt: skip
    without = post(server_url + SORT, {"image": image.tolist()}).json()["results"][0]
    for result in (from_json, form):
        assert result["setup_source"] == "request"
        assert result["technique_probabilities"] == from_header["technique_probabilities"]
    assert without["q_span_inv_angstrom"] is None and without["setup_source"] is None
    assert without["technique_probabilities"] != from_header["technique_probabilities"]
    with Client(server_url) as client:
        (sdk,) = client.sort_scattering(image, **setup)
        (sdk_header,) = client.sort_scattering(tmp_path / "a.cbf")
    assert sdk.q_span_inv_angstrom == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5) and sdk.setup_source == "request"
    assert sdk.technique_probabilities == sdk_header.technique_probabilities == from_header["technique_probabilities"]


def test_oversized_upload_is_refused_before_it_is_read(server_url: str) -> None:
    """A declared body over the 64 MiB limit is refused from its headers (nothing is sent)."""
    address = urlparse(server_url)
    for content_type in ("application/x-hdf5", "multipart/form-data; boundary=x", "application/json"):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.putrequest("POST", SORT)
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(65 * 2**20))
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        assert response.status == 413, body
        if content_type == "application/json":  # JSON images have their own, lower limit (parsing multiplies them)
            assert f"limit of {16 * 2**20} bytes for JSON" in body["error"]["message"]
        else:
            assert body["error"]["message"] == f"request body is larger than the limit of {64 * 2**20} bytes"


def test_registered_model_and_batch_job(server_url: str) -> None:
    models = httpx.get(server_url + "/v1/models").json()["models"]
    entry = next(m for m in models if m["name"] == "scattering_sorter")
    assert entry["served"] and entry["active_version"]
    good = {"image": ring_image((64, 80)).tolist()}
    job = post(server_url + "/v1/jobs", {"model": "scattering_sorter", "inputs": [good, {"image": [[4] * 64] * 64}]})
    assert job.status_code == 202, job.text
    status_url = server_url + job.json()["status_url"]
    deadline = time.monotonic() + 60
    while httpx.get(status_url).json()["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    first, constant = httpx.get(status_url + "/results").json()["results"]
    assert first["error"] is None and first["technique"] in LABELS["technique"]
    assert "constant" in constant["error"] and constant["technique"] is None


# -- SDK and CLI ------------------------------------------------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    image = pilatus_image()
    (folder / "a_0001.cbf").write_bytes(fabio_file("cbf", [image], tmp_path))
    (folder / "b_0002.tif").write_bytes(tiff(np.stack([image, image])))
    np.save(folder / "c_0003.npy", np.full((100, 100), 3, np.int32))  # constant: refused
    (folder / "d_0004.h5").write_bytes(eiger_h5(image[None].astype(np.int32), None, True))
    (folder / "notes.txt").write_text("not an image, not a supported suffix: skipped")
    return folder


def test_sdk_sorts_paths_bytes_arrays_and_a_folder(server_url: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    image = pilatus_image()
    with Client(server_url) as client:
        from_path = client.sort_scattering(folder / "b_0002.tif", saliency=True)
        from_bytes = client.sort_scattering((folder / "a_0001.cbf").read_bytes())
        from_array = client.sort_scattering(image, saliency_label="rods")
        files = client.sort_scattering_folder(folder, progress=True)
        only_tif = client.sort_scattering_folder(folder, pattern="*.tif", progress=False)
        with pytest.raises(InvalidInputError, match=r"c_0003\.npy: the image is constant"):
            client.sort_scattering(folder / "c_0003.npy")
        with pytest.raises(ClientRequestError, match="accepted: TIFF"):
            client.sort_scattering(b"nothing I know")
        with pytest.raises(NotFoundError):
            client.sort_scattering_folder(folder, version="0.0.1")
    assert [r.source for r in from_path] == [f"{folder / 'b_0002.tif'}[frame {k}]" for k in range(2)]
    assert all(isinstance(r, ScatteringResult) and r.ok and r.model == "scattering_sorter" for r in from_path)
    written = from_path[0].save_saliency_png(tmp_path / "saliency.png")
    assert Image.open(written).size == (488, 196) and from_path[0].saliency_label == from_path[0].technique
    assert from_bytes[0].source == "body" and from_bytes[0].saliency_png is None
    assert from_array[0].saliency_label == "rods"
    assert from_array[0].technique_probabilities == from_path[0].technique_probabilities
    with pytest.raises(ValueError, match="no saliency PNG"):
        from_bytes[0].save_saliency_png(tmp_path / "none.png")
    assert [Path(f.path).name for f in files] == ["a_0001.cbf", "b_0002.tif", "c_0003.npy", "d_0004.h5"]
    assert [f.ok for f in files] == [True, True, False, True]
    assert files[2].status_code == 422 and "constant" in files[2].error and not files[2].results
    assert [len(f.results) for f in files] == [1, 2, 0, 1]
    assert files[0].results[0].technique_probabilities == from_bytes[0].technique_probabilities
    assert [Path(f.path).name for f in only_tif] == ["b_0002.tif"]
    with Client(server_url) as client, pytest.raises(ValueError, match="2D array"):
        client.sort_scattering(np.zeros((2, 64, 64)))


async def test_async_sdk_has_the_same_surface(server_url: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with Client(server_url) as client:
        expected = client.sort_scattering(folder / "a_0001.cbf")
    async with AsyncClient(server_url) as client:
        got = await client.sort_scattering(folder / "a_0001.cbf", saliency=True)
        files = await client.sort_scattering_folder(folder, progress=False)
        with_setup = await client.sort_scattering_folder(
            folder, pattern="a_*", progress=False, distance_m=0.25, wavelength_angstrom=1.0, pixel_size_um=172
        )
    assert with_setup[0].results[0].q_span_inv_angstrom == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5)
    assert got[0].technique_probabilities == expected[0].technique_probabilities and got[0].saliency_png
    assert [f.ok for f in files] == [True, True, False, True]


def test_cli_predicts_scattering_files_and_writes_saliency_pngs(server_url: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    out = tmp_path / "saliency"
    files = [str(folder / "a_0001.cbf"), str(folder / "b_0002.tif")]
    command = [sys.executable, "-m", "matserve.cli", "predict", "scattering", *files, "--saliency-png", str(out),
               "--url", server_url]  # fmt: skip
    table = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "a_0001.cbf" in table.stdout and "b_0002.tif[frame 1]" in table.stdout and "technique" in table.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_0001.saliency.png", "b_0002_frame0.saliency.png",
                                                     "b_0002_frame1.saliency.png"]  # fmt: skip
    bad = subprocess.run([*command[:5], str(folder / "c_0003.npy"), files[0], "--json", "--url", server_url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "c_0003.npy: the image is constant" in bad.stderr
    rows = json.loads(bad.stdout)
    assert [Path(r["source"]).name for r in rows] == ["a_0001.cbf", "c_0003.npy"] and rows[1]["error"]
