"""Binary XRD uploads (NPY bodies, multipart text files) -> encoder items, including hostile input."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from matserve.codecs.xrd import MAX_POINTS, MODEL_GRID_DEG, PatternError, encode_batch
from matserve.codecs.xrd_uploads import (
    MAX_TEXT_BYTES,
    MAX_VALUES,
    XrdUploadTooLarge,
    decode_xrd_files,
    decode_xrd_npy,
)

RNG = np.random.default_rng(19)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def header_only(descr: str, shape: tuple[int, ...], fortran_order: bool = False) -> bytes:
    """An NPY header declaring anything, followed by no data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran_order, "shape": shape})
    return buffer.getvalue()


def decode(body: bytes, max_patterns: int = 1024, wavelength_angstrom: float | None = None) -> list[dict[str, Any]]:
    return decode_xrd_npy(body, max_patterns=max_patterns, wavelength_angstrom=wavelength_angstrom)


def peaks(n: int, grid: np.ndarray = MODEL_GRID_DEG) -> np.ndarray:
    centres = RNG.uniform(30, 80, size=(n, 1))
    return 10 + 1000 * np.exp(-((grid[None, :] - centres) ** 2) / 0.1)


# -- NPY: accepted forms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f8", np.uint16, np.int32])
def test_model_grid_rows_share_one_grid_and_view_the_body(dtype: Any) -> None:
    intensity = peaks(5).astype(dtype)
    body = npy(intensity)
    items = decode(body, wavelength_angstrom=1.54184)
    assert len(items) == 5
    assert all(item["two_theta_deg"] is MODEL_GRID_DEG for item in items)  # one grid object, no copies
    assert all(item["wavelength_angstrom"] == 1.54184 for item in items)
    assert all(np.shares_memory(item["intensity"], np.frombuffer(body, np.uint8)) for item in items)
    np.testing.assert_array_equal(np.stack([item["intensity"] for item in items]), intensity)
    batch = encode_batch(items)
    assert batch.rows == [0, 1, 2, 3, 4] and batch.patterns.shape == (5, 2048)


def test_pairs_with_one_grid_give_one_grid_object_and_encode_like_json() -> None:
    grid = np.linspace(15.0, 95.0, 3001)
    intensity = peaks(3, grid)
    body = npy(np.stack([np.stack([grid, row]) for row in intensity]).astype(np.float32))
    items = decode(body)
    assert items[0]["two_theta_deg"] is items[1]["two_theta_deg"] is items[2]["two_theta_deg"]
    as_json = [{"two_theta_deg": grid.astype(np.float32).tolist(), "intensity": row.astype(np.float32).tolist()}
               for row in intensity]  # fmt: skip
    np.testing.assert_allclose(encode_batch(items).patterns, encode_batch(as_json).patterns, atol=1e-6)


def test_float32_model_grid_pairs_are_taken_as_the_model_grid() -> None:
    body = npy(np.stack([np.stack([MODEL_GRID_DEG, row]) for row in peaks(2)]).astype(np.float32))
    assert all(item["two_theta_deg"] is MODEL_GRID_DEG for item in decode(body))


def test_pairs_with_a_grid_per_row() -> None:
    grids = [np.linspace(18.0 + k, 92.0, 800) for k in range(3)]
    body = npy(np.stack([np.stack([g, p]) for g, p in zip(grids, peaks(3, grids[0]), strict=True)]))
    items = decode(body)
    for item, grid in zip(items, grids, strict=True):
        np.testing.assert_array_equal(item["two_theta_deg"], grid)
    assert encode_batch(items).rows == [0, 1, 2]


def test_single_patterns_and_the_2_by_2048_ambiguity() -> None:
    (one,) = decode(npy(peaks(1)[0]))
    assert one["two_theta_deg"] is MODEL_GRID_DEG
    grid = np.linspace(20.0, 90.0, 1500)
    (pair,) = decode(npy(np.stack([grid, peaks(1, grid)[0]])))
    np.testing.assert_array_equal(pair["two_theta_deg"], grid)
    (on_grid,) = decode(npy(np.stack([MODEL_GRID_DEG, peaks(1)[0]])))  # row 0 is the model grid: one pattern
    assert on_grid["two_theta_deg"] is MODEL_GRID_DEG
    assert len(decode(npy(peaks(2)))) == 2  # otherwise two rows of intensities
    assert len(decode(npy(np.stack([MODEL_GRID_DEG, peaks(1)[0]])), max_patterns=1)) == 1
    with pytest.raises(XrdUploadTooLarge, match="holds 2 patterns, over the limit of 1"):
        decode(npy(peaks(2)), max_patterns=1)


def test_fortran_order_is_read_as_the_same_values() -> None:
    intensity = peaks(4)
    items = decode(npy(np.asfortranarray(intensity)))
    np.testing.assert_array_equal(np.stack([item["intensity"] for item in items]), intensity)
    pairs = np.stack([np.stack([MODEL_GRID_DEG * 1.01, row]) for row in intensity])
    items = decode(npy(np.asfortranarray(pairs)))
    np.testing.assert_array_equal(items[2]["intensity"], intensity[2])


def test_nan_intensity_is_refused_per_item_and_the_others_go_on() -> None:
    intensity = peaks(3)
    intensity[1, 100] = np.nan
    batch = encode_batch(decode(npy(intensity)))
    assert batch.rows == [0, 2] and "NaN" in batch.results[1]["error"]


# -- NPY: refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "broken NPY header"),
        (b"not an npy file at all", "broken NPY header"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8',", "broken NPY header"),
        (header_only("<f8", (2, 2048))[:-5], "broken NPY header"),
        (header_only("<f4", (4, 2048)), "truncated"),
    ],
)
def test_broken_or_truncated_npy_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(PatternError, match=message) as caught:
        decode(body)
    assert "(n, 2048)" in str(caught.value) or "truncated" in str(caught.value)  # says what is accepted
    assert not isinstance(caught.value, XrdUploadTooLarge)


@pytest.mark.parametrize("descr", ["|O", "<c16", "<f2", "|b1", "<U8", [("a", "<f4"), ("b", "<f4")], ("<f4", (2,))])
def test_unaccepted_dtypes_are_refused_from_the_header(descr: Any) -> None:
    with pytest.raises(PatternError, match=r"dtype .*expected an NPY array of float32/float64"):
        decode(header_only(descr, (1, 2048)))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2000,), r"shape \(2000,\)"),
        ((3, 2000), r"shape \(3, 2000\)"),
        ((3, 3, 500), r"shape \(3, 3, 500\)"),
        ((1, 1, 2, 2048), r"shape \(1, 1, 2, 2048\)"),
        ((), r"shape \(\)"),
        ((0, 2048), "no pattern"),
        ((-1, 2048), "no pattern"),
        ((2, 0), "0 points per pattern; at least 100"),
        ((4, 2, 50), "50 points per pattern; at least 100"),
    ],
)
def test_wrong_shapes_are_refused_with_what_is_accepted(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(PatternError, match=message) as caught:
        decode(header_only("<f4", shape))
    assert not isinstance(caught.value, XrdUploadTooLarge)
    assert "or (n, 2, m) 2θ (degrees) and intensity" in str(caught.value) or "no pattern" in str(caught.value)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((10**12, 2048), "10000000000000 patterns|1000000000000 patterns, over the limit of 1024"),
        ((1, 2, 10**12), f"points per pattern, over the limit of {MAX_POINTS}"),
        ((2, 10**15), f"points per pattern, over the limit of {MAX_POINTS}"),
        ((1000, 2, MAX_POINTS), f"over the limit of {MAX_VALUES} numbers"),
    ],
)
def test_huge_declared_shapes_are_refused_before_allocation(shape: tuple[int, ...], message: str) -> None:
    body = header_only("<f8", shape)  # a header alone: allocating or viewing the data would fail differently
    with pytest.raises(XrdUploadTooLarge, match=message):
        decode(body)


def test_too_many_patterns_for_the_request_limit() -> None:
    with pytest.raises(XrdUploadTooLarge, match="holds 5 patterns, over the limit of 4 per request"):
        decode(npy(peaks(5)), max_patterns=4)


def test_a_shared_grid_with_nan_or_going_back_is_refused_once() -> None:
    grid = np.linspace(20.0, 90.0, 500)
    bad = grid.copy()
    bad[10] = np.nan
    with pytest.raises(PatternError, match="NaN or infinite"):
        decode(npy(np.stack([np.stack([bad, row]) for row in peaks(3, grid)])))
    back = grid.copy()
    back[7] = back[6]
    with pytest.raises(PatternError, match="strictly increasing; it is not at index 7"):
        decode(npy(np.stack([back, peaks(1, grid)[0]])))


# -- multipart text files ---------------------------------------------------------------------------------------


def xy(grid: np.ndarray, intensity: np.ndarray, sep: str = " ", header: str = "# 2theta intensity\n") -> bytes:
    return (header + "".join(f"{t:.5f}{sep}{y:.3f}\n" for t, y in zip(grid, intensity, strict=True))).encode()


def decode_files(files: list[tuple[str, bytes]], max_patterns: int = 1024) -> tuple[list[dict[str, Any]], list[str]]:
    return decode_xrd_files(files, max_patterns=max_patterns, wavelength_angstrom=None)


def test_text_files_decode_to_items_with_file_names() -> None:
    grid = np.linspace(20.0, 90.0, 1400)
    intensity = peaks(3, grid)
    files = [
        ("scan_1.xy", xy(grid, intensity[0])),
        ("C:\\data\\scan_2.csv", xy(grid, intensity[1], sep=",", header="2theta,intensity\n")),
        ("run/7/scan_3.dat", "'Probe: é\n".encode("latin-1") + xy(grid, intensity[2], sep="\t", header="")),
    ]
    items, labels = decode_files(files)
    assert labels == ["scan_1.xy", "scan_2.csv", "scan_3.dat"]
    np.testing.assert_allclose(items[1]["intensity"], intensity[1], atol=1e-3)
    assert items[0]["wavelength_angstrom"] is None and items[0]["two_theta_deg"].dtype == np.float64
    assert encode_batch(items).rows == [0, 1, 2]


@pytest.mark.parametrize(
    ("files", "error", "message"),
    [
        ([], PatternError, "no files in the request; send two-column text files"),
        ([("a.xy", b"20 1\n")] * 3, XrdUploadTooLarge, "3 files, over the limit of 2 per request"),
        ([("scan.png", b"\x89PNG\r\n")], PatternError, r"scan.png: unsupported file type '.png'; expected"),
        ([("scan.xy", b"20 1\n21\x00 2\n")], PatternError, "scan.xy is not a text file"),
        ([("empty.xy", b"")], PatternError, "empty.xy: no data rows"),
        ([("bad.xy", b"20 1\n21 2\nabc def\n")], PatternError, "bad.xy, line 3: not numbers"),
        ([("one.xy", b"20 1\n21\n")], PatternError, "one.xy, line 2: needs 2θ and intensity"),
        ([("big.xy", b"1" * (MAX_TEXT_BYTES + 1))], XrdUploadTooLarge, "big.xy is .* bytes, over the limit"),
        ([("long.xy", b"1 2\n" * (MAX_POINTS + 1025))], XrdUploadTooLarge, "long.xy has .* lines, over the limit"),
    ],
)
def test_file_refusals_name_the_file(files: list[tuple[str, bytes]], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        decode_files(files, max_patterns=2)


def test_a_file_over_max_points_without_comments_is_too_large() -> None:
    data = b"1 2\n" * (MAX_POINTS + 1)
    with pytest.raises(XrdUploadTooLarge, match=f"{MAX_POINTS + 1} points, over the limit of {MAX_POINTS}"):
        decode_files([("many.xy", data)])


@pytest.mark.parametrize(
    "text",
    [
        "# Cu Ka\n20.00 105\n20.02 107\n\n20.04 110\n",
        "20.00\t105\t10.2\n20.02\t107\t10.3 9 9 9\n",
        "2theta,intensity\n,20.00,,105\n20.02;107\n",
        "! instrument\n'sample\n; note\n20 1\n21 x\n",
        "20 1\n21\n",
        "header only\n",
        "",
    ],
)
def test_server_reads_text_files_as_the_sdk_does(text: str) -> None:
    """The multipart decoder parses with the SDK's own parser: same points, or the SDK's message (plus what is
    accepted)."""
    from matserve_client.xrd_files import PatternFileError, parse_pattern

    try:
        expected: Any = tuple(parse_pattern(text, source="f.xy"))
    except PatternFileError as error:
        expected = str(error)
    try:
        items, _ = decode_xrd_files([("f.xy", text.encode())], max_patterns=4, wavelength_angstrom=None)
        got: Any = (items[0]["two_theta_deg"].tolist(), items[0]["intensity"].tolist())
    except PatternError as error:
        got = str(error).split("; expected ")[0]
    assert got == expected
