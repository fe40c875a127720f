"""Detector file readers, the scattering codec and the served sorter (in-process ONNX Runtime), no server.

Every file is written here by the library that defines its format (tifffile, fabio, h5py + hdf5plugin, numpy,
Pillow) from small synthetic images: a ring on Poisson noise with detector gaps. The committed model may be an
untrained placeholder, so nothing here depends on what it answers: only structure, conventions and parity.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matserve
from matserve.codecs.detector_files import (
    NEXUS_DATA,
    FrameBudget,
    TooManyFrames,
    UnsupportedFormat,
    read_frames,
    sniff_format,
)
from matserve.codecs.scattering import ImageError, Setup, encode_image, setup_features
from matserve.errors import InputRejected
from matserve.models.scattering_sorter import Labels, ScatteringSorterModel, uses_setup
from matserve.registry import Registry
from matserve.runtimes.onnxruntime import OnnxRuntime
from tests.conftest import MODELS_DIR

PILATUS_100K = (195, 487)
PILATUS_2M = (1679, 1475)
EIGER_GAP_U32 = 2**32 - 1


def ring_image(shape: tuple[int, int] = PILATUS_100K, dtype: type = np.int32, seed: int = 0,
               radius: float = 0.3) -> np.ndarray:  # fmt: skip
    """Poisson background (mean 5) and a ring of +200 counts around the centre, radius ``radius`` x the short side."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    distance = np.hypot(yy - rows / 2, xx - cols / 2)
    image = rng.poisson(5.0, shape) + 200 * (np.abs(distance - radius * min(shape)) < 3)
    return image.astype(dtype)


def pilatus_image(seed: int = 0) -> np.ndarray:
    """195 x 487 int32 with a -1 gap of 7 columns (a module gap) and a -2 bad pixel, as Pilatus CBFs have."""
    image = ring_image(PILATUS_100K, np.int32, seed)
    image[:, 100:107] = -1
    image[50, 50] = -2
    return image


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def tiff(pages: np.ndarray, compression: str | None = None) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pages, photometric="minisblack", compression=compression)
    return buffer.getvalue()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def fabio_file(kind: str, frames: list[np.ndarray], tmp_path: object) -> bytes:
    """A CBF (``cbfimage``) or EDF (``edfimage``, every frame) written by fabio."""
    from fabio import cbfimage, edfimage

    path = tmp_path / f"image.{kind}"  # type: ignore[operator]
    if kind == "cbf":
        cbfimage.CbfImage(data=frames[0]).write(str(path))
    else:
        image = edfimage.EdfImage(data=frames[0])
        for frame in frames[1:]:
            image.append_frame(data=frame)
        image.write(str(path))
    return path.read_bytes()


def eiger_h5(frames: np.ndarray, pixel_mask: np.ndarray | None, compressed: bool) -> bytes:
    """An Eiger-like NeXus file: ``/entry/data/data`` (n, rows, cols) uint32, ``pixel_mask`` under the detector."""
    import h5py
    import hdf5plugin

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        entry = handle.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        options = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4")) if compressed else {}
        data.create_dataset("data", data=frames, chunks=(1, *frames.shape[1:]), **options)
        if pixel_mask is not None:
            entry.create_dataset("instrument/detector/pixel_mask", data=pixel_mask)
        entry.create_dataset("instrument/detector/flatfield", data=np.ones(frames.shape[1:], np.float32))
    return buffer.getvalue()


# -- readers ------------------------------------------------------------------------------------------------------


def test_tiff_single_int32_and_multipage_uint16() -> None:
    image = pilatus_image()
    (frame,) = read_frames(tiff(image), "pilatus.tif")
    assert frame.label == "pilatus.tif" and frame.image.dtype == np.int32 and frame.mask is None
    np.testing.assert_array_equal(frame.image, image)
    stack = np.stack([ring_image(dtype=np.uint16, seed=k) for k in range(3)])
    frames = read_frames(tiff(stack), "stack.tif")
    assert [f.label for f in frames] == [f"stack.tif[frame {k}]" for k in range(3)]
    assert all(f.image.dtype == np.uint16 for f in frames)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)


@pytest.mark.parametrize("compression", ["lzw", "packbits", "zlib"])
def test_compressed_tiffs_decode(compression: str) -> None:
    image = pilatus_image()
    (frame,) = read_frames(tiff(image, compression), f"{compression}.tif")
    np.testing.assert_array_equal(frame.image, image)


def test_cbf_int32_with_gap_rows_and_edf_float32_and_uint16_frames(tmp_path: object) -> None:
    image = pilatus_image()
    image[60:77, :] = -1  # a horizontal module gap too
    (cbf,) = read_frames(fabio_file("cbf", [image], tmp_path), "scan_0001.cbf")
    assert cbf.label == "scan_0001.cbf" and cbf.image.dtype == np.int32
    np.testing.assert_array_equal(cbf.image, image)
    floats = ring_image(dtype=np.float32) - 2.5
    (edf,) = read_frames(fabio_file("edf", [floats], tmp_path), "reduced.edf")
    assert edf.image.dtype == np.float32
    np.testing.assert_array_equal(edf.image, floats)
    frames = [ring_image(dtype=np.uint16, seed=k) for k in range(2)]
    two = read_frames(fabio_file("edf", frames, tmp_path), "two.edf")
    assert [f.label for f in two] == ["two.edf[frame 0]", "two.edf[frame 1]"]
    for got, sent in zip(two, frames, strict=True):
        assert got.image.dtype == np.uint16
        np.testing.assert_array_equal(got.image, sent)


@pytest.mark.parametrize("compressed", [False, True])
def test_eiger_nexus_hdf5_frames_and_pixel_mask(compressed: bool) -> None:
    frames = np.stack([ring_image((256, 300), np.uint32, seed=k) for k in range(2)])
    frames[:, 120:125, :] = EIGER_GAP_U32
    pixel_mask = np.zeros((256, 300), np.uint32)
    pixel_mask[:, :40] = 1  # a dead module
    data = eiger_h5(frames, pixel_mask, compressed)
    if compressed:  # bitshuffle/LZ4 (HDF5 filter 32008) really was used
        import h5py

        with h5py.File(io.BytesIO(data), "r") as handle:
            assert "32008" in handle[NEXUS_DATA]._filters
    got = read_frames(data, "eiger.h5")
    assert [f.label for f in got] == ["eiger.h5[frame 0]", "eiger.h5[frame 1]"]
    for frame, sent in zip(got, frames, strict=True):
        assert frame.image.dtype == np.uint32
        np.testing.assert_array_equal(frame.image, sent)
        np.testing.assert_array_equal(frame.mask, pixel_mask)
    encoded = encode_image(got[0].image, got[0].mask)
    expected = 1 - (40 * 256 + 5 * 260) / (256 * 300)  # the mask and the gap rows are invalid
    assert encoded.valid_fraction == pytest.approx(expected)


def test_hdf5_without_nexus_takes_the_largest_image_dataset_and_refuses_master_files() -> None:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle["scan/thumbnail"] = ring_image((40, 40))
        handle["scan/image"] = ring_image((200, 220))
        handle["scan/flatfield_big"] = np.ones((300, 300), np.float32)  # larger, but not an image
        handle["scan/positions"] = np.arange(10.0)
    (frame,) = read_frames(buffer.getvalue(), "plain.h5")
    assert frame.image.shape == (200, 220) and frame.mask is None
    master = io.BytesIO()
    with h5py.File(master, "w") as handle:
        handle.create_group("entry/data")["data_000001"] = h5py.ExternalLink("series_data_000001.h5", NEXUS_DATA)
    with pytest.raises(ImageError, match=r"/entry/data/data_000001 is an external link \(a master file\?") as refused:
        read_frames(master.getvalue(), "series_master.h5")
    assert "series_data_000001" not in str(refused.value)  # the file it names is never repeated (nor opened)


def test_npy_int32_uint32_squeezed_and_refused_dimensions() -> None:
    image = pilatus_image()
    (frame,) = read_frames(npy(image), "a.npy")
    assert frame.image.dtype == np.int32
    eiger = ring_image((514, 1030), np.uint32)
    eiger[255:259, :] = EIGER_GAP_U32
    (frame,) = read_frames(npy(eiger[None]), "b.npy")  # (1, rows, cols) is squeezed
    assert frame.image.shape == (514, 1030) and frame.image.dtype == np.uint32
    assert encode_image(frame.image).valid_fraction == pytest.approx(1 - 4 / 514)
    for bad in (np.zeros((3, 64, 64), np.int32), np.arange(100, dtype=np.int32)):
        with pytest.raises(ImageError, match="1D and 3D arrays are refused"):
            read_frames(npy(bad), "bad.npy")
    with pytest.raises(ImageError, match="dtype"):
        read_frames(npy(np.array([["a"] * 64] * 64)), "text.npy")


def test_png_8_and_16_bit_greyscale_and_colour_refused() -> None:
    eight = ring_image(dtype=np.uint8)
    (frame,) = read_frames(png(eight), "x.png")
    assert frame.image.dtype == np.uint8
    np.testing.assert_array_equal(frame.image, eight)
    sixteen = ring_image(dtype=np.uint16) * 100
    (frame,) = read_frames(png(sixteen), "x16.png")
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, sixteen)
    with pytest.raises(ImageError, match="RGB PNG; a detector image is greyscale"):
        read_frames(png(np.zeros((64, 64, 3), np.uint8)), "colour.png")


def test_format_sniffing_unknown_and_broken_files(tmp_path: object) -> None:
    image = pilatus_image()
    samples = {"tiff": tiff(image), "cbf": fabio_file("cbf", [image], tmp_path), "npy": npy(image),
               "edf": fabio_file("edf", [image.astype(np.float32)], tmp_path), "png": png(image.astype(np.uint16)),
               "hdf5": eiger_h5(image[None].astype(np.uint32), None, False)}  # fmt: skip
    for kind, data in samples.items():
        assert sniff_format(data) == kind
    for data in (b"", b"<html>not an image</html>", b'{"image": [[1, 2]]}'):
        with pytest.raises(UnsupportedFormat, match=r"accepted: TIFF.*CBF.*EDF.*HDF5.*NPY.*PNG"):
            read_frames(data, "mystery.bin")
    for kind in ("tiff", "edf", "npy", "hdf5", "png"):
        with pytest.raises(ImageError) as failure:
            read_frames(samples[kind][: len(samples[kind]) // 2], f"cut.{kind}")
        assert not isinstance(failure.value, UnsupportedFormat), kind


def test_frame_and_pixel_budgets_are_checked_before_decoding() -> None:
    small = np.stack([ring_image((32, 32), np.uint16, seed=k) for k in range(5)])
    with pytest.raises(TooManyFrames, match="at most 4 per request"):
        read_frames(tiff(small), "many.tif", FrameBudget(max_frames=4))
    with pytest.raises(TooManyFrames, match="at most 3000 decoded pixels"):
        read_frames(tiff(small), "many.tif", FrameBudget(max_pixels=3000))
    shared = FrameBudget(max_frames=6)
    read_frames(tiff(small), "a.tif", shared)
    with pytest.raises(TooManyFrames, match="would have at least 7"):  # TIFF pages are counted until the limit
        read_frames(tiff(small), "b.tif", shared)


def test_multipart_files_are_read_on_threads_in_order_with_one_shared_budget() -> None:
    from matserve.api.scattering import decode_multipart

    files = [(f"f{k}.tif", tiff(np.stack([ring_image((64, 64), np.uint16, seed=k)] * 2))) for k in range(12)]
    files.insert(5, ("broken.tif", b"II*\x00" + b"\x00" * 20))
    items = decode_multipart(files, [], FrameBudget(max_frames=24)).items
    assert [getattr(i, "label", None) for i in items[:2]] == ["f0.tif[frame 0]", "f0.tif[frame 1]"]
    assert isinstance(items[10], str) and "broken.tif" in items[10] and items[11].label == "f5.tif[frame 0]"
    for k, item in enumerate(i for i in items if not isinstance(i, str)):
        np.testing.assert_array_equal(item.image, ring_image((64, 64), np.uint16, seed=k // 2))
    with pytest.raises(TooManyFrames, match="at most 23 per request"):
        decode_multipart(files, [], FrameBudget(max_frames=23))


# -- the codec ------------------------------------------------------------------------------------------------


def test_gaps_give_partial_valid_fraction_in_their_blocks() -> None:
    image = pilatus_image()
    encoded = encode_image(image)
    assert encoded.bin_factor == 4 and encoded.valid_fraction == pytest.approx(1 - (7 * 195 + 1) / (195 * 487))
    valid = encoded.tensor[..., 1]
    top, left, height, _ = encoded.placement
    # detector columns 100-106 are binned into input columns 25 (100-103: all gap) and 26 (104-107: 3 of 4 gap)
    inside = valid[top + 1 : top + height - 1]
    assert (inside[:, left + 25] == 0).all() and (inside[:, left + 26] == 0).all()  # < half valid: masked
    assert (inside[:, left + 24] == 1).all() and (inside[:, left + 27] == 1).all()
    eiger = ring_image((256, 256), np.uint32)
    eiger[:, 130] = EIGER_GAP_U32  # one gap column in a block of 2
    fraction = encode_image(eiger).tensor[..., 1]
    np.testing.assert_allclose(fraction[:, 65], 0.5, atol=1 / 255)  # the valid fraction is kept to 1/255
    assert (fraction[:, 64] == 1).all()


def test_a_hot_pixel_is_clipped_and_changes_only_its_block() -> None:
    image = ring_image(seed=1)
    hot = image.copy()
    hot[10, 201] = 10**9
    plain, clipped = encode_image(image).tensor[..., 0], encode_image(hot).tensor[..., 0]
    top, left, _, _ = encode_image(image).placement
    block = (top + 10 // 4, left + 201 // 4)
    assert clipped[block] < 0.5 < plain.max()  # unclipped, its block would be the brightest of the image (1.0)
    changed = np.argwhere(np.abs(clipped - plain) > 1e-6)
    assert [tuple(c) for c in changed] == [block]


@pytest.mark.parametrize(("shape", "factor", "box"), [
    (PILATUS_100K, 4, (39, 3, 49, 122)),
    (PILATUS_2M, 14, (4, 11, 120, 106)),
    ((40, 60), -2, (24, 4, 80, 120)),
    ((100, 90), -1, (14, 19, 100, 90)),
])  # fmt: skip
def test_letterbox_keeps_the_aspect_ratio(shape: tuple[int, int], factor: int, box: tuple[int, ...]) -> None:
    encoded = encode_image(ring_image(shape, np.int32))
    assert encoded.bin_factor == factor and encoded.placement == box
    top, left, height, width = box
    valid = encoded.tensor[..., 1]
    # an edge block with less than half of it on the detector is masked (1475 = 105 x 14 + 5: the last column)
    assert (valid[top : top + height - 1, left : left + width - 1] > 0).all()
    outside = np.ones_like(valid, dtype=bool)
    outside[top : top + height, left : left + width] = False
    assert (valid[outside] == 0).all() and (encoded.tensor[..., 0][outside] == 0).all()
    if factor < -1:  # upsampled by pixel repetition
        inner = encoded.tensor[top : top + height, left : left + width, 0]
        np.testing.assert_array_equal(inner, np.repeat(np.repeat(inner[::2, ::2], 2, axis=0), 2, axis=1))


def test_constant_empty_and_wrongly_shaped_images_are_refused() -> None:
    from matserve.models.scattering_sorter import _encode

    for image in (np.zeros((195, 487), np.int32), np.full((64, 64), -1, np.int32), np.full((64, 64), 0.0)):
        with pytest.raises(ImageError, match=r"constant|valid pixels"):
            encode_image(image)
    for image in (np.zeros((195, 487), np.int32), np.full((64, 64), 7.0), np.full((200, 300), 3, np.uint16)):
        assert "constant" in str(_encode(image)[3])  # constant non-zero images too, in the served path
    for bad in (np.arange(1000), np.zeros((2, 64, 64)), np.zeros((16, 400)), np.zeros((10, 5000))):
        with pytest.raises(ImageError, match=r"2D detector image|accepted size"):
            encode_image(bad)


def test_dtypes_and_the_mask_argument() -> None:
    base = ring_image((128, 160), np.int64)
    reference = encode_image(base.astype(np.int32)).tensor
    for dtype in (np.int64, np.uint16, np.uint32, np.float32, np.float64):
        np.testing.assert_allclose(encode_image(base.astype(dtype)).tensor, reference, atol=1e-6, err_msg=str(dtype))
    floats = base.astype(np.float32)
    floats[:, :8] = np.nan
    nan_masked = encode_image(floats)
    mask = np.zeros(base.shape, bool)
    mask[:, :8] = True
    masked = encode_image(base.astype(np.int32), mask)
    np.testing.assert_allclose(nan_masked.tensor, masked.tensor, atol=1e-6)
    assert masked.valid_fraction == pytest.approx(1 - 8 / 160)
    top, left, height, _ = masked.placement  # binned 2 x 2: the stripe is 4 input columns
    assert (masked.tensor[top : top + height, left : left + 4, 1] == 0).all()
    assert (masked.tensor[top : top + height, left + 4, 1] == 1).all()
    with pytest.raises(ImageError, match="mask shape"):
        encode_image(base, np.zeros((10, 10), bool))
    with pytest.raises(ImageError, match="not numeric"):
        encode_image(np.full((64, 64), 1 + 1j))


def reference_block_means(image: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented binning rule in plain numpy: (mean of valid clipped counts, valid fraction) per block."""
    from matserve.codecs.scattering import CLIP_PERCENTILE, _quantiles, invalid_pixels

    bad = invalid_pixels(image, mask)
    sample = image[::7, ::7][~bad[::7, ::7]].astype(np.float32)
    (ceiling,) = _quantiles(sample, (CLIP_PERCENTILE,))
    counts = np.where(bad, 0.0, np.clip(np.nan_to_num(image.astype(np.float64)), 0, max(ceiling, 0.0)))
    rows, cols = -(-image.shape[0] // factor) * factor, -(-image.shape[1] // factor) * factor
    padded_counts, padded_valid = np.zeros((rows, cols)), np.zeros((rows, cols))
    padded_counts[: image.shape[0], : image.shape[1]] = counts
    padded_valid[: image.shape[0], : image.shape[1]] = ~bad
    blocks = (rows // factor, factor, cols // factor, factor)
    n_valid = padded_valid.reshape(blocks).sum(axis=(1, 3))
    sums = padded_counts.reshape(blocks).sum(axis=(1, 3))
    return np.divide(sums, n_valid, out=np.zeros_like(sums), where=n_valid > 0), n_valid / factor**2


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.uint32, np.float32])
def test_the_fused_kernel_matches_the_documented_rule_in_numpy(dtype: type) -> None:
    rng = np.random.default_rng(3)
    image = ring_image((300, 520), dtype, seed=3)
    gap = {np.int32: -1, np.uint16: np.iinfo(np.uint16).max, np.uint32: np.iinfo(np.uint32).max, np.float32: np.nan}
    image[:, 200:207] = gap[dtype]
    image.flat[rng.integers(0, image.size, 20)] = 60_000  # hot pixels, clipped
    mask = np.zeros(image.shape, bool)
    mask[10:30, 40:90] = True
    encoded = encode_image(np.asfortranarray(image), mask)  # a non-C-contiguous layout of the same image
    means, fraction = reference_block_means(image, mask, encoded.bin_factor)
    top, left, height, width = encoded.placement
    got_fraction = encoded.tensor[top : top + height, left : left + width, 1]
    good = got_fraction > 0
    np.testing.assert_allclose(got_fraction[good], np.rint(fraction * 255)[good] / 255, atol=1e-6)
    np.testing.assert_array_equal(good, np.rint(fraction * 255) / 255 >= 0.5)
    # channel 0 is an increasing function of the block mean: same ordering, and equal where scaling is known
    log_means = np.log1p(means[good])
    got = encoded.tensor[top : top + height, left : left + width, 0][good]
    lo, hi = np.percentile(log_means, 1, method="lower"), np.percentile(log_means, 99.8, method="lower")
    np.testing.assert_allclose(got, np.clip((log_means - lo) / (hi - lo), 0, 1), atol=2e-3)


def test_images_encoded_on_threads_match_serial_encoding() -> None:
    from matserve.models.scattering_sorter import encode_items

    images = [ring_image(PILATUS_100K, dtype, seed=k) for k, dtype in enumerate([np.int32, np.uint32] * 4)]
    threaded = encode_items(images)
    for image, (encoded, shape, setup, error) in zip(images, threaded, strict=True):
        assert error is None and shape == image.shape and setup == Setup()
        np.testing.assert_array_equal(encoded.tensor, encode_image(image).tensor)


def test_the_codec_works_from_a_read_only_installation_without_a_writable_home(tmp_path: Path) -> None:
    """numba refuses ``cache=True`` when it finds nowhere to write; the codec then compiles per process.

    Needs a read-only filesystem, i.e. root and ``mount`` (a tmpfs remounted read-only); skipped elsewhere.
    """
    mount_point = tmp_path / "read_only"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)]).returncode != 0:
        pytest.skip("needs root and mount to make a read-only filesystem")
    try:
        package = Path(matserve.__file__).parent
        shutil.copytree(package, mount_point / "matserve", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        script = (
            "import numpy as np; from matserve.codecs.scattering import encode_image, _bin_valid_clipped; "
            "print(type(_bin_valid_clipped._cache).__name__, encode_image(np.arange(4096).reshape(64, 64)).bin_factor)"
        )
        env = {**os.environ, "HOME": str(mount_point), "PYTHONPATH": str(mount_point)}
        env.pop("NUMBA_CACHE_DIR", None)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["NullCache", "-2"]  # compiled in memory, and it encodes
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


# -- the measurement setup ----------------------------------------------------------------------------------------

PILATUS_100K_Q_SPAN = 2.16543  # 1/A: D 0.25 m, 1 A, 172 um pixels; diagonal 524.59 px = 90.23 mm, 2theta 19.85 deg


def test_q_span_setup_features_limits_and_precedence() -> None:
    setup = Setup(distance_m=0.25, wavelength_angstrom=1.0, pixel_size_m=172e-6, source="header")
    two_theta = np.arctan(np.hypot(*PILATUS_100K) * 172e-6 / 0.25)
    assert setup.q_span_inv_angstrom(PILATUS_100K) == pytest.approx(4 * np.pi * np.sin(two_theta / 2), rel=1e-12)
    assert setup.q_span_inv_angstrom(PILATUS_100K) == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5)
    assert Setup(distance_m=0.25, wavelength_angstrom=1.0).q_span_inv_angstrom(PILATUS_100K) is None
    np.testing.assert_array_equal(setup_features(None), [0.0, 0.0])
    np.testing.assert_allclose(setup_features(10.0), [1.0, 1.0])
    np.testing.assert_allclose(setup_features(0.1), [-1.0, 1.0])
    for bad in ({"distance_m": 0.0}, {"wavelength_angstrom": 50.0}, {"pixel_size_m": float("nan")}):
        with pytest.raises(ImageError, match=f"{next(iter(bad))} = .* is outside the accepted range"):
            Setup(**bad)
    overridden = setup.updated(Setup(distance_m=2.0, source="request"))
    assert overridden == Setup(
        2.0, 1.0, 172e-6, source="distance_m=request; wavelength_angstrom=header; pixel_size_m=header"
    )
    assert overridden.sources() == {"distance_m": "request", "wavelength_angstrom": "header", "pixel_size_m": "header"}
    assert Setup().updated(Setup(1.0, 1.0, 75e-6, source="request")).source == "request"
    assert setup.updated(Setup()) == setup


def pilatus_header(distance: str = "0.25000") -> str:
    return (f"# Detector: PILATUS 100K, S/N 1-0000\r\n# Pixel_size 172e-6 m x 172e-6 m\r\n"
            f"# Exposure_time 1.0000000 s\r\n# Wavelength 1.0000 A\r\n# Detector_distance {distance} m\r\n"
            "# Beam_xy (250.00, 100.00) pixels")  # fmt: skip


def test_the_setup_is_read_from_cbf_edf_and_nexus_headers(tmp_path: Path) -> None:
    import h5py
    from fabio import cbfimage, edfimage

    image = pilatus_image()
    cbf_source = ("distance_m=header:CBF Detector_distance (m); wavelength_angstrom=header:CBF Wavelength (A); "
                  "pixel_size_m=header:CBF Pixel_size (m)")  # fmt: skip
    expected = Setup(0.25, 1.0, 172e-6, source=cbf_source)
    cbf = cbfimage.CbfImage(data=image)
    cbf.header["_array_data.header_convention"] = "PILATUS_1.2"
    cbf.header["_array_data.header_contents"] = pilatus_header()
    cbf.write(str(tmp_path / "a.cbf"))
    assert read_frames((tmp_path / "a.cbf").read_bytes(), "a.cbf")[0].setup == expected
    cbf.header["_array_data.header_contents"] = pilatus_header("0.00000")  # an unset distance stays unknown
    cbf.write(str(tmp_path / "b.cbf"))
    unset = read_frames((tmp_path / "b.cbf").read_bytes(), "b.cbf")[0].setup
    assert unset == Setup(None, 1.0, 172e-6, cbf_source.split("; ", 1)[1])
    edf = edfimage.EdfImage(data=image.astype(np.float32),
                            header={"SampleDistance": "0.25", "WaveLength": "1e-10", "PSize_1": "172e-6"})  # fmt: skip
    edf.append_frame(data=image.astype(np.float32), header={"SampleDistance": "0.25", "WaveLength": "1e-10"})
    edf.write(str(tmp_path / "c.edf"))
    first, second = read_frames((tmp_path / "c.edf").read_bytes(), "c.edf")
    edf_source = "distance_m=header:EDF SampleDistance (m); wavelength_angstrom=header:EDF WaveLength (m)"
    assert first.setup == Setup(0.25, 1.0, 172e-6, edf_source + "; pixel_size_m=header:EDF PSize_1 (m)")
    assert second.setup == Setup(0.25, 1.0, None, edf_source)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle[NEXUS_DATA] = np.stack([image, image]).astype(np.uint32)
        handle.create_dataset("/entry/instrument/detector/detector_distance", data=250.0).attrs["units"] = "mm"
        handle.create_dataset("/entry/instrument/beam/incident_wavelength", data=0.1).attrs["units"] = b"nm"
        handle.create_dataset("/entry/instrument/detector/x_pixel_size", data=172.0).attrs["units"] = "um"
    for frame in read_frames(buffer.getvalue(), "d.h5"):  # mm, nm and um converted
        values = (frame.setup.distance_m, frame.setup.wavelength_angstrom, frame.setup.pixel_size_m)
        assert values == pytest.approx((0.25, 1.0, 172e-6), rel=1e-12)
        assert frame.setup.sources() == {
            "distance_m": "header:NeXus /entry/instrument/detector/detector_distance (mm)",
            "wavelength_angstrom": "header:NeXus /entry/instrument/beam/incident_wavelength (nm)",
            "pixel_size_m": "header:NeXus /entry/instrument/detector/x_pixel_size (um)",
        }
    assert read_frames(tiff(image), "e.tif")[0].setup == Setup()
    assert read_frames(npy(image), "f.npy")[0].setup == Setup()


# -- the served model (in-process ONNX Runtime) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sorter() -> ScatteringSorterModel:
    model = ScatteringSorterModel(Registry(MODELS_DIR), OnnxRuntime(intra_op_threads=1))
    model.load()
    return model


def test_served_path_matches_a_direct_onnx_run(sorter: ScatteringSorterModel) -> None:
    import onnxruntime as ort

    from matserve.codecs.detector_files import Frame

    images = [pilatus_image(seed=k) for k in range(3)] + [ring_image(PILATUS_2M, np.uint32), ring_image((40, 60))]
    setups = [Setup(0.25, 1.0, 172e-6, "header"), Setup(), Setup(3.0, 1.5, 75e-6, "header"), Setup(2.0), Setup()]
    frames = [Frame(image, None, f"i{k}", setup) for k, (image, setup) in enumerate(zip(images, setups, strict=True))]
    prediction = sorter.sort(frames)
    version = sorter.version()
    assert uses_setup(version.card)
    session = ort.InferenceSession(str(version.file("model.onnx")), providers=["CPUExecutionProvider"])
    q_spans = [setup.q_span_inv_angstrom(image.shape) for setup, image in zip(setups, images, strict=True)]
    assert q_spans[0] == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5) and q_spans[1::2] == [None, None]
    direct = session.run(None, {"images": np.stack([encode_image(image).tensor for image in images]),
                                "setup": np.stack([setup_features(q) for q in q_spans])})  # fmt: skip
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, direct, strict=True))
    labels = Labels.from_card(version.card)
    assert labels.maps == (*labels.technique, *labels.geometry, *labels.features) and len(labels.maps) == 11
    for k, result in enumerate(prediction.results):
        assert result["error"] is None and result["detector_shape"] == list(images[k].shape)
        for key, output, names_ in (("technique_probabilities", "technique_probabilities", labels.technique),
                                    ("geometry_probabilities", "geometry_probabilities", labels.geometry),
                                    ("feature_probabilities", "feature_probabilities", labels.features)):  # fmt: skip
            assert list(result[key]) == list(names_)
            np.testing.assert_allclose(list(result[key].values()), outputs[output][k], atol=1e-6)
        assert sum(result["technique_probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert sum(result["geometry_probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert result["technique"] == labels.technique[int(outputs["technique_probabilities"][k].argmax())]
        assert result["geometry"] == labels.geometry[int(outputs["geometry_probabilities"][k].argmax())]
        called = outputs["feature_probabilities"][k] >= np.array(labels.feature_thresholds)
        assert result["features"] == [f for f, c in zip(labels.features, called, strict=True) if c]
        assert 0 < result["valid_fraction"] <= 1 and result["saliency_png_base64"] is None
        assert result["q_span_inv_angstrom"] == (None if q_spans[k] is None else pytest.approx(q_spans[k], abs=1e-6))
        assert result["setup_source"] == (None if q_spans[k] is None else "header")


def test_the_setup_changes_the_answer_and_the_request_overrides_the_header(sorter: ScatteringSorterModel) -> None:
    from matserve.codecs.detector_files import Frame

    image = ring_image()
    header = Setup(0.25, 1.0, 172e-6, "header")
    alone, with_header = (sorter.sort([Frame(image, None, "a", setup)]).results[0] for setup in (Setup(), header))
    assert alone["q_span_inv_angstrom"] is None and alone["setup_source"] is None
    assert with_header["q_span_inv_angstrom"] == pytest.approx(PILATUS_100K_Q_SPAN, abs=1e-5)
    assert alone["technique_probabilities"] != with_header["technique_probabilities"]  # the network reads it
    far = sorter.sort([Frame(image, None, "a", header)], setup=Setup(distance_m=5.0, source="request")).results[0]
    assert far["setup_source"] == "distance_m=request; wavelength_angstrom=header; pixel_size_m=header"
    assert far["q_span_inv_angstrom"] == pytest.approx(
        Setup(5.0, 1.0, 172e-6).q_span_inv_angstrom(PILATUS_100K), abs=1e-6
    )
    from_request = sorter.sort([Frame(image, None, "a")], setup=Setup(0.25, 1.0, 172e-6, "request")).results[0]
    assert from_request["technique_probabilities"] == with_header["technique_probabilities"]
    assert from_request["setup_source"] == "request"
    as_job = sorter([{"image": image.tolist(), "distance_m": 0.25, "wavelength_angstrom": 1.0, "pixel_size_um": 172}])
    assert as_job.results[0]["technique_probabilities"] == with_header["technique_probabilities"]
    refused = sorter([{"image": image.tolist(), "distance_m": -1.0}, {"image": image.tolist(), "pixel_size_um": 0.000172},
                      {"image": image.tolist(), "wavelength_angstrom": float("nan")}]).results  # fmt: skip
    assert "distance_m = -1.0 is outside the accepted range 0.01-100" in refused[0]["error"]
    assert "pixel_size_um = 0.000172 is outside the accepted range 1-2000" in refused[1]["error"]
    assert "wavelength_angstrom = nan is outside the accepted range" in refused[2]["error"]


def test_per_item_errors_saliency_and_job_items(sorter: ScatteringSorterModel) -> None:
    from matserve.codecs.detector_files import Frame

    good = pilatus_image()
    items = [Frame(good, None, "a"), Frame(np.zeros((64, 64), np.int32), None, "b"), "unreadable file", Frame(good, None, "c")]  # fmt: skip
    prediction = sorter.sort(items, saliency=True)
    first, constant, unreadable, last = prediction.results
    assert "constant" in constant["error"] and constant["technique"] is None
    assert unreadable["error"] == "unreadable file"
    assert first["technique_probabilities"] == last["technique_probabilities"]
    png_image = Image.open(io.BytesIO(base64.b64decode(first["saliency_png_base64"])))
    assert png_image.format == "PNG" and png_image.mode == "RGB" and png_image.size == (122 * 4, 49 * 4)
    assert first["saliency_label"] == first["technique"]
    chosen = sorter.sort([Frame(good, None, "a")], saliency_label="diffuse_halo").results[0]
    assert chosen["saliency_label"] == "diffuse_halo" and chosen["saliency_png_base64"]
    with pytest.raises(InputRejected, match="accepted: saxs, waxs, gisaxs, giwaxs, transmission, grazing, rings"):
        sorter.sort([Frame(good, None, "a")], saliency_label="powder")
    as_job = sorter([{"image": good.tolist()}, {"image": [[1, 2], [3, 4]]}])  # the batch-job lifecycle
    assert as_job.results[0]["technique_probabilities"] == first["technique_probabilities"]
    assert "accepted size" in as_job.results[1]["error"]


def test_card_outputs_are_read_from_the_graph_for_triton() -> None:
    version = Registry(MODELS_DIR).get("scattering_sorter")
    outputs = {spec["name"]: (spec["dtype"], spec["shape"]) for spec in version.tensor_specs("outputs")}
    assert outputs == {"technique_probabilities": ("float32", [-1, 4]), "geometry_probabilities": ("float32", [-1, 2]),
                       "feature_probabilities": ("float32", [-1, 5]),
                       "class_activation_maps": ("float32", [-1, 16, 16, 11]),
                       "feature_distance": ("float32", [-1])}  # fmt: skip
    inputs = [(spec["name"], spec["dtype"], spec["shape"]) for spec in version.tensor_specs("inputs")]
    assert inputs == [("images", "float32", [-1, 128, 128, 2]), ("setup", "float32", [-1, 2])]
