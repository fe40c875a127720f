"""``POST /scattering/sort`` with the new uploads, in-process (as :mod:`tests.unit.test_api_routes`): headerless
raw frames with ``shape``/``dtype`` (query, form field), compressed files, per-value setup provenance, hostile
input (wrong byte count, bad dtype, huge shape, a gzip bomb, truncated bzip2), and the SDK's raw options."""

from __future__ import annotations

import bz2
import gzip

import httpx
import numpy as np
import pytest

from matserve.api.context import ServingContext
from matserve_client import AsyncClient, Client
from tests.unit.conftest import asgi_client, settings_for
from tests.unit.test_detector_readers import rings, tiff_bytes

PILATUS_TEXT = ("# Pixel_size 172e-6 m x 172e-6 m\r\n# Wavelength 1.0000 A\r\n# Detector_distance 0.25000 m\r\n"
                "# Beam_xy (250.00, 100.00) pixels\r\n")  # fmt: skip


OCTET = {"content-type": "application/octet-stream"}


async def test_raw_frames_by_query_and_by_form_field(client: httpx.AsyncClient) -> None:
    stack = np.stack([rings((120, 160), np.uint16, seed) for seed in range(2)])
    answer = await client.post("/scattering/sort", params={"shape": "120x160", "dtype": ">u2"},
                               content=stack.astype(">u2").tobytes(), headers=OCTET)  # fmt: skip
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["source"] for r in results] == ["body[frame 0]", "body[frame 1]"]
    assert all(r["error"] is None and r["detector_shape"] == [120, 160] for r in results)
    form = await client.post("/scattering/sort", data={"shape": "120,160", "dtype": "uint16"},
                             files={"files": ("a.raw", stack[0].tobytes(), "application/octet-stream")})  # fmt: skip
    assert form.status_code == 200, form.text
    assert form.json()["results"][0]["technique_probabilities"] == results[0]["technique_probabilities"]


async def test_a_known_detector_frame_needs_no_options(client: httpx.AsyncClient) -> None:
    answer = await client.post("/scattering/sort", content=rings((1043, 981)).tobytes(), headers=OCTET)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["detector_shape"] == [1043, 981]


async def test_setup_sources_are_per_value_through_the_route(client: httpx.AsyncClient) -> None:
    body = gzip.compress(tiff_bytes(rings((195, 487)), description=PILATUS_TEXT))
    answer = await client.post("/scattering/sort", params={"distance_m": "2.0"}, content=body,
                               headers={"content-type": "application/gzip"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["setup_source"] == ("distance_m=request; wavelength_angstrom=header:TIFF ImageDescription "
                                      "Wavelength (A); pixel_size_m=header:TIFF ImageDescription Pixel_size (m)")  # fmt: skip
    assert result["q_span_inv_angstrom"] is not None


@pytest.mark.parametrize(
    ("params", "body", "status", "message"),
    [
        ({"shape": "120x160", "dtype": "uint16"}, bytes(120 * 160 * 2 - 1), 422, "not a whole number of 120 x 160"),
        ({"shape": "120x160", "dtype": "complex64"}, bytes(100), 422, "is not accepted for raw files"),
        ({"shape": "100000x100000", "dtype": "uint8"}, bytes(100), 422, "outside the accepted size"),
        ({"shape": "120x160"}, bytes(100), 422, "give both"),
        ({"shape": "12;0x160", "dtype": "uint8"}, bytes(100), 422, "not 'rows x cols'"),
        ({}, b"\x00\x01 some bytes of no format", 415, "headerless raw pixels"),
        ({}, bz2.compress(tiff_bytes(rings((195, 487))))[:-300], 422, "truncated"),
        ({}, gzip.compress(gzip.compress(b"x" * 100)), 422, "one level of compression"),
    ],
)
async def test_hostile_raw_and_compressed_uploads(
    client: httpx.AsyncClient, params: dict[str, str], body: bytes, status: int, message: str
) -> None:
    answer = await client.post("/scattering/sort", params=params, content=body, headers=OCTET)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]["message"]


async def test_json_bodies_refuse_raw_options(client: httpx.AsyncClient) -> None:
    answer = await client.post("/scattering/sort", json={"image": rings((40, 40)).tolist(), "shape": "40x40",
                                                         "dtype": "int32"})  # fmt: skip
    assert answer.status_code == 422 and "headerless raw files" in answer.json()["error"]["message"]


async def test_a_gzip_bomb_is_refused_within_the_pixel_budget(context: ServingContext) -> None:
    bomb = gzip.compress(bytes(128 << 20), compresslevel=9)
    async for small in asgi_client(context, settings_for(max_scattering_pixels=1 << 20)):
        answer = await small.post("/scattering/sort", content=bomb, headers={"content-type": "application/gzip"})
        assert answer.status_code == 413, answer.text
        assert "inflates to more than" in answer.json()["error"]["message"]


async def test_openapi_lists_the_raw_options(client: httpx.AsyncClient) -> None:
    operation = (await client.get("/openapi.json")).json()["paths"]["/scattering/sort"]["post"]
    assert {"shape", "dtype"} <= {p["name"] for p in operation["parameters"]}
    content = operation["requestBody"]["content"]
    assert {"application/gzip", "application/x-bzip2"} <= set(content)
    assert {"shape", "dtype"} <= set(content["multipart/form-data"]["schema"]["properties"])


# -- the SDK's raw options (HTTP faked) ----------------------------------------------------------------------------


def _recorder(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model": "scattering_sorter", "version": "1.3.0", "results": []})

    return httpx.MockTransport(handler)


async def test_the_sdk_sends_shape_and_dtype_keyword_only() -> None:
    seen: list[httpx.Request] = []
    with Client("http://matserve", transport=_recorder(seen), backoff=0.0) as client:
        client.sort_scattering(b"\x00" * 64, shape=(4, 8), dtype="uint16", distance_m=0.25)
        with pytest.raises(ValueError, match="give both"):
            client.sort_scattering(b"\x00" * 64, shape=(4, 8))
        with pytest.raises(ValueError, match="two positive whole numbers"):
            client.sort_scattering(b"\x00" * 64, shape=(4, 8.5), dtype="uint16")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            client.sort_scattering(b"\x00" * 64, (4, 8), "uint16")  # type: ignore[misc]
    async with AsyncClient("http://matserve", transport=_recorder(seen), backoff=0.0) as async_client:
        await async_client.sort_scattering(b"\x00" * 64, shape=(4, 8), dtype=">f4")
    assert [dict(r.url.params) for r in seen] == [
        {"distance_m": "0.25", "shape": "4x8", "dtype": "uint16"},
        {"shape": "4x8", "dtype": ">f4"},
    ]
