"""The beamline file readers of the scattering sorter: header setups (NeXus, Pilatus/NSLS-II TIFF, SAXSLAB XML,
MarCCD, EDF variants), gzip/bzip2 uploads, headerless raw frames, zero-valued module gaps and per-value provenance.

Each reader is tested on files written here (tifffile, h5py, fabio, and a MarCCD frame header built byte by byte),
and on the real files of ``<repo>/../shared/data/scattering_real`` (skipped when that folder is absent): the
setups their sources state are asserted where the file header carries them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from matserve.codecs import detector_layouts, raw_frames
from matserve.codecs.detector_files import (
    ACCEPTED_FORMATS,
    NEXUS_DATA,
    FrameBudget,
    TooManyFrames,
    UnsupportedFormat,
    read_frames,
)
from matserve.codecs.detector_layouts import LAYOUTS, layout_of, zero_gap_mask
from matserve.codecs.detector_setup import HC_KEV_ANGSTROM, convert, setup_from_edf_header
from matserve.codecs.raw_frames import RawLayout, RawLayoutError
from matserve.codecs.scattering import ImageError, Setup, format_sources
from tests.conftest import REPO

REAL = REPO.parent / "shared" / "data" / "scattering_real"


def rings(shape: tuple[int, int], dtype: type = np.int32, seed: int = 0) -> np.ndarray:
    """Poisson counts with a ring: a detector image with structure (never constant)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    radius = np.hypot(rows - shape[0] / 2, cols - shape[1] / 2)
    return (rng.poisson(5.0, shape) + 200 * np.exp(-0.5 * ((radius - min(shape) / 4) / 3) ** 2)).astype(dtype)


def tiff_bytes(image: np.ndarray, **kwargs: object) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **kwargs)
    return buffer.getvalue()


def edf_bytes(image: np.ndarray, header: dict[str, str]) -> bytes:
    import tempfile

    from fabio import edfimage

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.edf"
        edfimage.EdfImage(data=image, header=header).write(str(path))
        return path.read_bytes()


def values(setup: Setup) -> tuple[float | None, float | None, float | None]:
    return setup.distance_m, setup.wavelength_angstrom, setup.pixel_size_m


def assert_values(setup: Setup, expected: tuple[float | None, ...], rel: float = 1e-9) -> None:
    """The setup's (distance, wavelength, pixel size) are ``expected``: ``None`` where unknown, else within ``rel``."""
    for got, want in zip(values(setup), expected, strict=True):
        assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, rel=rel)), values(setup)


# -- provenance ----------------------------------------------------------------------------------------------------


def test_setup_sources_are_per_value_and_a_request_overrides_a_header() -> None:
    header = Setup.from_sources({"distance_m": (0.25, "header:CBF Detector_distance (m)"),
                                 "wavelength_angstrom": (1.0, "header:CBF Wavelength (A)")})  # fmt: skip
    assert header.source == ("distance_m=header:CBF Detector_distance (m); "
                             "wavelength_angstrom=header:CBF Wavelength (A)")  # fmt: skip
    merged = header.updated(Setup(distance_m=2.0, pixel_size_m=75e-6, source="request"))
    assert values(merged) == (2.0, 1.0, 75e-6)
    assert merged.source == ("distance_m=request; wavelength_angstrom=header:CBF Wavelength (A); "
                             "pixel_size_m=request")  # fmt: skip
    assert merged.sources()["wavelength_angstrom"] == "header:CBF Wavelength (A)"
    assert Setup().updated(Setup(1.0, 1.0, 75e-6, "request")).source == "request"  # one plain place: one word
    assert header.updated(Setup()) == header
    assert format_sources({}) == "" and Setup().sources() == {}


# -- units ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "unit", "expected", "label"),
    [
        ("distance_m", 250.0, None, 0.25, "mm, inferred"),
        ("distance_m", 2.5, None, 2.5, "m, inferred"),
        ("distance_m", 25.0, "cm", 0.25, "cm"),
        ("distance_m", 250000.0, "um", 0.25, "um"),
        ("wavelength_angstrom", 0.1, "nm", 1.0, "nm"),
        ("wavelength_angstrom", 1.54e-10, None, 1.54, "m, inferred"),
        ("wavelength_angstrom", 1.54, None, 1.54, "angstrom, inferred"),
        ("energy", 12.398419843320026, "keV", 1.0, "keV"),
        ("energy", 8048.0, None, HC_KEV_ANGSTROM / 8.048, "eV, inferred"),
        ("energy", 8.048, None, HC_KEV_ANGSTROM / 8.048, "keV, inferred"),
        ("pixel_size_m", 172.0, None, 172e-6, "um, inferred"),
        ("pixel_size_m", 0.172, None, 172e-6, "mm, inferred"),
        ("pixel_size_m", 172e-6, None, 172e-6, "m, inferred"),
    ],
)
def test_units_and_plausibility(kind: str, value: float, unit: str | None, expected: float, label: str) -> None:
    converted = convert(kind, value, unit)
    assert converted is not None
    assert converted[0] == pytest.approx(expected, rel=1e-12) and converted[1] == label


def test_unusable_units_and_values_are_unknown() -> None:
    assert convert("distance_m", 0.0, "m") is None and convert("distance_m", 1.0, "furlong") is None
    assert convert("energy", 3.0, "GeV") == pytest.approx((HC_KEV_ANGSTROM / 3e6, "GeV"))  # refused by the limits
    assert convert("wavelength_angstrom", 50.0, None) is None and convert("distance_m", float("nan"), "m") is None


# -- NeXus ---------------------------------------------------------------------------------------------------------


def nexus(fill: object, image: np.ndarray | None = None) -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle[NEXUS_DATA] = rings((64, 80)) if image is None else image
        fill(handle)  # type: ignore[operator]
    return buffer.getvalue()


def dataset(handle: object, path: str, value: float, units: str | None = None, nx_class: str | None = None) -> None:
    item = handle.create_dataset(path, data=value)  # type: ignore[attr-defined]
    if units is not None:
        item.attrs["units"] = units
    if nx_class is not None:
        item.parent.attrs["NX_class"] = nx_class


def test_nexus_units_inferred_values_and_energies() -> None:
    def fill(handle: object) -> None:
        dataset(handle, "/entry/instrument/detector/distance", 250.0)  # no units: mm, inferred
        dataset(handle, "/entry/instrument/monochromator/energy", 8.048, "keV")
        dataset(handle, "/entry/instrument/detector/x_pixel_size", 0.172, "mm")

    setup = read_frames(nexus(fill), "a.nxs")[0].setup
    assert values(setup) == pytest.approx((0.25, HC_KEV_ANGSTROM / 8.048, 172e-6), rel=1e-9)
    assert setup.sources() == {
        "distance_m": "header:NeXus /entry/instrument/detector/distance (mm, inferred)",
        "wavelength_angstrom": "header:NeXus /entry/instrument/monochromator/energy (keV)",
        "pixel_size_m": "header:NeXus /entry/instrument/detector/x_pixel_size (mm)",
    }


def test_nexus_names_from_the_file_stay_printable_in_the_source() -> None:
    name = "det; distance_m=request\x07" + "x" * 500
    setup = read_frames(nexus(lambda h: dataset(h, f"/entry/instrument/{name}/distance", 2.0, "m", "NXdetector")),
                        "n.h5")[0].setup  # fmt: skip
    assert setup.distance_m == 2.0 and setup.sources()["distance_m"].startswith("header:NeXus /entry/instrument/det_")
    assert ";" not in setup.source.split("=", 1)[1] and len(setup.source) < 200


def test_nexus_groups_found_by_nx_class_and_source_energy_needs_units() -> None:
    def fill(handle: object) -> None:
        dataset(handle, "/entry/instrument/pilatus/detector_distance", 2.5, "m", "NXdetector")
        dataset(handle, "/entry/instrument/pilatus/x_pixel_size", 172.0, "um")
        dataset(handle, "/entry/instrument/dcm/wavelength", 0.1, "nm", "NXmonochromator")
        dataset(handle, "/entry/instrument/source/energy", 6.0)  # the ring's 6 GeV without units: not a photon

    setup = read_frames(nexus(fill), "b.h5")[0].setup
    assert values(setup) == pytest.approx((2.5, 1.0, 172e-6), rel=1e-9)
    assert setup.sources()["wavelength_angstrom"] == "header:NeXus /entry/instrument/dcm/wavelength (nm)"

    def source_only(handle: object) -> None:
        dataset(handle, "/entry/instrument/source/energy", 6.0)
        dataset(handle, "/entry/instrument/beam/incident_wavelength", 1.2)  # NXbeam default unit: Angstrom

    setup = read_frames(nexus(source_only), "c.h5")[0].setup
    assert setup.wavelength_angstrom == pytest.approx(1.2)
    assert (
        setup.source
        == "wavelength_angstrom=header:NeXus /entry/instrument/beam/incident_wavelength (angstrom, inferred)"
    )
    with_units = read_frames(nexus(lambda h: dataset(h, "/entry/instrument/source/energy", 12.0, "keV")), "d.h5")
    assert with_units[0].setup.wavelength_angstrom == pytest.approx(HC_KEV_ANGSTROM / 12.0)
    ring = read_frames(nexus(lambda h: dataset(h, "/entry/instrument/source/energy", 6.0, "GeV")), "e.h5")
    assert ring[0].setup == Setup()


# -- TIFF headers --------------------------------------------------------------------------------------------------

PILATUS_TEXT = ("# Detector: PILATUS3 1M, S/N 10-0120\r\n# Pixel_size 172e-6 m x 172e-6 m\r\n"
                "# Wavelength 0.7701 A\r\n# Detector_distance 0.27700 m\r\n# Beam_xy (490.00, 520.00) pixels\r\n")  # fmt: skip


def test_pilatus_tiff_image_description() -> None:
    setup = read_frames(tiff_bytes(rings((195, 487)), description=PILATUS_TEXT), "p.tif")[0].setup
    assert values(setup) == pytest.approx((0.277, 0.7701, 172e-6))
    assert setup.sources()["wavelength_angstrom"] == "header:TIFF ImageDescription Wavelength (A)"
    unset = PILATUS_TEXT.replace("(490.00, 520.00)", "(0.00, 0.00)")  # camserver defaults: geometry never set
    assert_values(read_frames(tiff_bytes(rings((195, 487)), description=unset), "q.tif")[0].setup, (None, None, 172e-6))


SAXSLAB_XML = ('<?xml version="1.0" ?><SAXSLABparameters><param name="det_pixel_size">172e-6 172e-6</param>'
               '<param name="det_thickness">0.000320</param><param name="wavelength">1.3414</param>'
               '<param name="detector_dist">536.7868</param><param name="pixelsize">0.172 0.172</param>'
               "</SAXSLABparameters>")  # fmt: skip


@pytest.mark.parametrize("tag", [270, 315])
def test_saxslab_xml_in_a_tiff_tag(tag: int) -> None:
    image = rings((487, 619))
    data = (tiff_bytes(image, description=SAXSLAB_XML) if tag == 270
            else tiff_bytes(image, extratags=[(tag, "s", 0, SAXSLAB_XML, True)]))  # fmt: skip
    setup = read_frames(data, "g.tiff")[0].setup
    assert values(setup) == pytest.approx((0.5367868, 1.3414, 172e-6))
    assert setup.sources() == {"distance_m": "header:SAXSLAB detector_dist (mm)",
                               "wavelength_angstrom": "header:SAXSLAB wavelength (A)",
                               "pixel_size_m": "header:SAXSLAB det_pixel_size (m)"}  # fmt: skip


def marccd(image: np.ndarray, distance_um: int, wavelength_fm: int, pixel_nm: int, big_endian: bool = False) -> bytes:
    """A MarCCD/Rayonix file: a little-endian TIFF IFD, the 3072-byte frame header at 1024, uint16 pixels at 4096."""
    rows, cols = image.shape
    entries = [(256, 4, cols), (257, 4, rows), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 4096),
               (278, 4, rows), (279, 4, rows * cols * 2), (34710, 4, 1024)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for code, kind, value in entries:
        ifd += struct.pack("<HHI", code, kind, 1) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    ifd += struct.pack("<I", 0)
    head = (b"II*\x00" + struct.pack("<I", 8) + ifd).ljust(1024, b"\x00")
    order = ">" if big_endian else "<"
    frame = bytearray(3072)
    struct.pack_into(order + "I", frame, 0, 2)
    frame[4:7] = b"MMX"
    struct.pack_into("<I", frame, 28, 4321 if big_endian else 1234)
    struct.pack_into(order + "i", frame, 640, distance_um)
    struct.pack_into(order + "ii", frame, 772, pixel_nm, pixel_nm)
    struct.pack_into(order + "i", frame, 908, wavelength_fm)
    return head + bytes(frame) + image.astype("<u2").tobytes()


@pytest.mark.parametrize("big_endian", [False, True])
def test_marccd_frame_header(big_endian: bool) -> None:
    image = rings((256, 256), np.uint16)
    frames = read_frames(marccd(image, 150_000, 103_318, 79_000, big_endian), "a.mccd")
    np.testing.assert_array_equal(frames[0].image, image)
    assert values(frames[0].setup) == pytest.approx((0.15, 1.03318, 79e-6))
    assert frames[0].setup.sources()["distance_m"] == "header:MarCCD xtal_to_detector (mm)"
    unset = read_frames(marccd(image, 0, 103_318, 79_000, big_endian), "b.mccd")[0].setup
    assert unset.distance_m is None and unset.wavelength_angstrom == pytest.approx(1.03318)


# -- EDF -----------------------------------------------------------------------------------------------------------


def test_edf_key_variants_and_a_pilatus_title() -> None:
    header = {"Distance": "250", "Energy": "12.398419843320026", "PixelSize": "75"}
    setup = setup_from_edf_header(header)
    assert values(setup) == pytest.approx((0.25, 1.0, 75e-6))
    assert setup.source == ("distance_m=header:EDF Distance (mm, inferred); wavelength_angstrom=header:EDF Energy "
                            "(keV, inferred); pixel_size_m=header:EDF PixelSize (um, inferred)")  # fmt: skip
    units = setup_from_edf_header({"SampleDistance": "25 cm", "wavelength": "1.5e-10", "psize_2": "172e-6"})
    assert values(units) == pytest.approx((0.25, 1.5, 172e-6))
    data = edf_bytes(rings((195, 487)), {"title": "# Pixel_size 172e-6 m x 172e-6 m\r", "WaveLength": "1e-10"})
    read = read_frames(data, "t.edf")[0].setup
    assert_values(read, (None, 1.0, 172e-6))
    assert read.sources()["pixel_size_m"] == "header:EDF title Pixel_size (m)"


# -- compressed uploads --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compressed_files_are_read_with_their_header(compress: object) -> None:
    image = rings((195, 487))
    packed = compress(tiff_bytes(image, description=PILATUS_TEXT))  # type: ignore[operator]
    frames = read_frames(packed, "p.tif.gz")
    np.testing.assert_array_equal(frames[0].image, image)
    assert frames[0].setup.wavelength_angstrom == pytest.approx(0.7701)


def test_compressed_refusals() -> None:
    tiff = tiff_bytes(rings((195, 487)))
    with pytest.raises(ImageError, match="one level of compression"):
        read_frames(gzip.compress(bz2.compress(tiff)), "twice.gz")
    with pytest.raises(ImageError, match="truncated") as truncated:
        read_frames(bz2.compress(tiff)[:-200], "cut.bz2")
    assert not isinstance(truncated.value, UnsupportedFormat | TooManyFrames)
    with pytest.raises(ImageError, match="not another gzip member"):
        read_frames(gzip.compress(tiff) + b"trailing junk", "junk.gz")
    with pytest.raises(UnsupportedFormat, match="inside the gzip compression"):
        read_frames(gzip.compress(b"hello, this is text"), "text.gz")


def test_a_gzip_bomb_stops_at_the_budget_before_allocating_it() -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=9)  # 256 MiB of zeros in ~250 kB
    budget = FrameBudget(max_pixels=4 << 20)  # 16 MiB + 1 MiB of inflated bytes allowed
    tracemalloc.start()
    try:
        with pytest.raises(TooManyFrames, match="inflates to more than"):
            read_frames(bomb, "bomb.tif.gz", budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak  # the bound plus chunks, not 256 MiB


# -- headerless raw ------------------------------------------------------------------------------------------------


def test_raw_frames_with_shape_and_dtype() -> None:
    stack = np.stack([rings((100, 120), np.uint16, seed) for seed in range(3)])
    frames = read_frames(stack.astype(">u2").tobytes(), "s.raw", raw=RawLayout.parse("100x120", ">uint16"))
    assert [f.label for f in frames] == ["s.raw[frame 0]", "s.raw[frame 1]", "s.raw[frame 2]"]
    for frame, expected in zip(frames, stack, strict=True):
        np.testing.assert_array_equal(frame.image, expected)
        assert frame.image.dtype == np.uint16 and frame.image.flags.writeable and frame.setup == Setup()
    floats = rings((64, 64), np.float32)
    read = read_frames(floats.tobytes(), "f.bin", raw=RawLayout.parse("(64, 64)", "f4"))
    np.testing.assert_array_equal(read[0].image, floats)
    with pytest.raises(ImageError, match="not a whole number of 100 x 120 uint16 frames"):
        read_frames(stack.tobytes()[:-2], "short.raw", raw=RawLayout.parse("100,120", "uint16"))
    with pytest.raises(TooManyFrames):
        read_frames(stack.tobytes(), "s.raw", FrameBudget(max_frames=2), raw=RawLayout.parse("100x120", "uint16"))


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [("100x", "uint16", "not 'rows x cols'"), ("10x10", "uint16", "outside the accepted size"), ("99999x99999", "int32", "each side 32-4500"),
     ("100x100", "complex64", "not accepted"), ("100x100", "int24", "not accepted")],
)  # fmt: skip
def test_raw_options_are_checked(shape: str, dtype: str, message: str) -> None:
    with pytest.raises(RawLayoutError, match=message):
        RawLayout.parse(shape, dtype)


def test_known_detector_sizes_are_recognised_without_options() -> None:
    assert {layout.name: layout.shape for layout in LAYOUTS} == {
        "Pilatus 100k": (195, 487), "Pilatus 200k": (407, 487), "Pilatus 300k": (619, 487),
        "Pilatus 300k-W": (195, 1475), "Pilatus 900k-W": (619, 1475), "Pilatus 1M": (1043, 981),
        "Pilatus 2M": (1679, 1475), "Pilatus 6M": (2527, 2463), "Eiger 500k": (514, 1030), "Eiger 1M": (1065, 1030),
        "Eiger 4M": (2167, 2070), "Eiger 9M": (3269, 3110), "Eiger 16M": (4371, 4150),
        "MarCCD/Rayonix 2048": (2048, 2048), "MarCCD/Rayonix 4096": (4096, 4096),
    }  # fmt: skip
    pilatus = rings((1043, 981), np.int32)
    frames = read_frames(pilatus.tobytes(), "frame.raw")
    np.testing.assert_array_equal(frames[0].image, pilatus)
    eiger = rings((514, 1030), np.uint16)
    assert read_frames(eiger.tobytes(), "e.raw")[0].image.dtype == np.uint16
    with pytest.raises(UnsupportedFormat, match="headerless raw pixels with the request's shape") as refused:
        read_frames(pilatus.tobytes()[:-4], "odd.raw")
    assert "TIFF" in str(refused.value) and ACCEPTED_FORMATS in str(refused.value)


def test_several_fitting_detectors_are_ambiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = detector_layouts.Layout("Pilatus 100k as uint32", (1, 1), (195, 487), (0, 0), ("uint32",))
    monkeypatch.setattr(raw_frames, "LAYOUTS", (*LAYOUTS, extra))
    with pytest.raises(ImageError, match=r"fit several detector frames \(195 x 487 int32; 195 x 487 uint32\)"):
        read_frames(rings((195, 487)).tobytes(), "which.raw")


# -- zero-valued module gaps ---------------------------------------------------------------------------------------


def gapped(shape: tuple[int, int], dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    known = layout_of(shape)
    assert known is not None
    layout, transposed = known
    mask = np.zeros(layout.shape, dtype=bool)
    rows, cols = layout.gap_bands()
    for band in rows:
        mask[band] = True
    for band in cols:
        mask[:, band] = True
    mask = mask.T if transposed else mask
    image = rings(shape, dtype) + 1
    image[mask] = 0
    return image, mask


@pytest.mark.parametrize("shape", [(1043, 981), (619, 1475), (1679, 1475), (1065, 1030), (1030, 1065)])
def test_zero_gaps_of_known_detectors_are_masked(shape: tuple[int, int]) -> None:
    image, expected = gapped(shape)
    expected_rows = {(1043, 981): 4 * 17, (619, 1475): 2 * 17, (1679, 1475): 7 * 17, (1065, 1030): 37}
    assert int(expected.all(axis=1).sum()) == expected_rows.get(shape, 0)  # gap rows: modules - 1 bands
    mask = read_frames(tiff_bytes(image), "g.tif")[0].mask
    assert mask is not None
    np.testing.assert_array_equal(mask, expected)
    image[tuple(np.argwhere(expected)[0])] = 3  # one gap pixel with counts: not a converted file's zero gaps
    assert zero_gap_mask(image) is None


def test_zero_lines_of_other_shapes_are_not_masked() -> None:
    image = rings((1040, 980)) + 1
    image[195:212] = 0
    assert zero_gap_mask(image) is None and read_frames(tiff_bytes(image), "x.tif")[0].mask is None
    single = rings((195, 487))  # one module, no gaps
    assert zero_gap_mask(single) is None


def test_a_zero_gap_mask_joins_an_eiger_pixel_mask() -> None:
    import h5py

    image, gaps = gapped((1065, 1030), np.uint32)
    pixel_mask = np.zeros(image.shape, dtype=np.uint32)
    pixel_mask[5, 7] = 1
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle[NEXUS_DATA] = image[None]
        handle["/entry/instrument/detector/pixel_mask"] = pixel_mask
    mask = read_frames(buffer.getvalue(), "e.h5")[0].mask
    assert mask is not None and mask[5, 7] and np.array_equal(mask & ~pixel_mask.astype(bool), gaps)


# -- the real files ------------------------------------------------------------------------------------------------

HEADER_SETUPS = {
    "saxsdog_agbeh2_1M.tif": (None, 1.54987, 172e-6),
    "saxsdog_buf1_00000.tif": (None, 1.54987, 172e-6),
    "xicam_AgB_10s_hi_1m.edf": (None, None, 172e-6),
    "chaitu-xrs_AgBH_10sec_SAXS.mccd": (None, 1.03318, 158e-6),
    "smi-analysis_300kw_wa0.0.tif": (None, 0.6794, 172e-6),
    "smi-analysis_300kw_wa13.0.tif": (None, 0.6794, 172e-6),
    "smi-analysis_900kw_wa0.0.tif": (None, 0.77012, 172e-6),
    "smi-analysis_900kw_wa20.0.tif": (None, 0.77012, 172e-6),
    "smi-analysis_AgBeh_Calibrant.tif": (None, 0.77012, 172e-6),
    "cea-swaxs_SafeliMove_WAXS1_1_00001.edf": (0.107403, 1.541889, 75e-6),
    "insitu-demo_AgBH_5m_11kev_cali_th0.000_waxs.tiff": (None, None, None),
    "insitu-demo_DPP_100_Opt5_AS_0_th0.150_waxs.tiff": (None, None, None),
    "insitu-demo_Siwafer_ref_th0.080_waxs.tiff": (None, None, None),
    "pywaxs_sam22_th0.300_maxs.tiff": (None, None, 172e-6),
    "pywaxs_sam0_th0.300_maxs.tiff": (None, None, 172e-6),  # Beam_xy (0, 0): the 1 m / 1.54 A are defaults
    "vvz-giwaxs_x.edf": (None, None, None),
    **{f"chaitu-xrs_layer_no_nxtal_{run}_SAXS.mccd": (None, 1.03318, 158e-6)
       for run in ("1000_4080min_th012_spot1_10sec", "1000_4080min_th020_spot1_10sec",
                   "1200_0480min_th010_spot1_10sec", "1000_0480min_th015_spot2_10sec")},
}  # fmt: skip
"""What each real file's header gives (distance m, wavelength Angstrom, pixel m): read by hand from the headers."""


def manifest() -> list[dict[str, str]]:
    if not (REAL / "manifest.tsv").is_file():
        return []
    with (REAL / "manifest.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.mark.skipif(not (REAL / "manifest.tsv").is_file(), reason="no ../shared/data/scattering_real beside the repo")
@pytest.mark.parametrize("row", manifest(), ids=lambda row: Path(row["local_file"]).name)
def test_real_files_give_the_setups_their_sources_state(row: dict[str, str]) -> None:
    path = REAL / row["local_file"]
    frames = read_frames(path.read_bytes(), path.name)
    setup = frames[0].setup
    rows, cols = (int(n) for n in row["shape"].split("x"))
    assert frames[0].image.shape == (rows, cols) and frames[0].image.dtype == np.dtype(row["dtype"])
    expected = HEADER_SETUPS[path.name]
    assert_values(setup, expected)
    stated = (row["distance_m"], row["wavelength_angstrom"], row["pixel_size_um"])
    scales = (1.0, 1.0, 1e-6)
    for got, text, scale in zip(values(setup), stated, scales, strict=True):
        if got is not None and text:  # where the header has a value the source states, they agree
            assert got == pytest.approx(float(text) * scale, rel=2e-3), path.name
    for name, where in setup.sources().items():
        assert where.startswith("header:"), (name, where)


@pytest.mark.skipif(not (REAL / "manifest.tsv").is_file(), reason="no ../shared/data/scattering_real beside the repo")
def test_real_zero_gaps_are_masked_and_real_minus_one_gaps_are_left_to_the_codec() -> None:
    converted = read_frames((REAL / "images/SAXS/xicam_AgB_10s_hi_1m.edf").read_bytes(), "x.edf")[0]
    layout, _ = layout_of(converted.image.shape) or (None, None)
    assert layout is not None and layout.name == "Pilatus 1M"
    assert converted.mask is not None and int(converted.mask.sum()) == 1043 * 981 - 10 * 195 * 487
    camserver = read_frames((REAL / "images/SAXS/saxsdog_agbeh2_1M.tif").read_bytes(), "s.tif")[0]
    assert camserver.mask is None and (camserver.image < 0).any()  # -1 gaps: masked by invalid_pixels


@pytest.mark.skipif(not (REAL / "manifest.tsv").is_file(), reason="no ../shared/data/scattering_real beside the repo")
def test_real_marccd_pixel_size_agrees_with_its_tiff_resolution() -> None:
    """An independent check of the frame header's offsets: the TIFF resolution tags say the same pixel size."""
    import tifffile

    path = REAL / "images/SAXS/chaitu-xrs_AgBH_10sec_SAXS.mccd"
    with tifffile.TiffFile(path) as tiff:
        pixels, centimetres = tiff.pages[0].tags["XResolution"].value  # pixels per centimetre
        assert tiff.pages[0].tags["ResolutionUnit"].value == 3
    setup = read_frames(path.read_bytes(), path.name)[0].setup
    assert setup.pixel_size_m == pytest.approx(0.01 * centimetres / pixels, rel=1e-9)


def test_edf_dummy_pixels_are_masked_and_dummy_zero_means_none() -> None:
    image = np.full((64, 80), 10.0, dtype=np.float32)
    image[5, :] = -1.5  # a dead row written as the header's Dummy
    image[7, 3] = -1.49  # within DDummy
    (frame,) = read_frames(edf_bytes(image, {"Dummy": "-1.5", "DDummy": "0.02"}), "x.edf")
    assert frame.mask is not None and frame.mask.sum() == 80 + 1
    assert frame.mask[5].all() and frame.mask[7, 3] and not frame.mask[6].any()
    (frame,) = read_frames(edf_bytes(image, {"Dummy": "0"}), "y.edf")
    assert frame.mask is None
    (frame,) = read_frames(edf_bytes(image, {"Dummy": "not a number"}), "z.edf")
    assert frame.mask is None
