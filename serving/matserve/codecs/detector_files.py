"""Detector image files -> 2D frames in the file's own dtype, for the scattering sorter.

:func:`read_frames` decodes the bytes of one upload (the format is recognised from the bytes, never from the
name or the declared content type) into :class:`Frame` objects: the image as the detector wrote it (int32
for Pilatus CBF, uint16/uint32 for Eiger, float32 for reduced EDF, ...), an optional bad-pixel mask, a label
naming the frame in messages and results, and the measurement setup the file records. What counts as an invalid
pixel is decided later, by :func:`matserve.codecs.scattering.invalid_pixels`.

Formats
-------
* **TIFF** (``II*``/``MM*``, also BigTIFF; MarCCD/Rayonix ``.mccd`` files are TIFFs): every page is a frame
  (reduced-resolution thumbnail pages are skipped); greyscale only.
* **CBF** (``###CBF`` or a CIF ``_array_data`` block; Pilatus/Dectris), read by fabio; -1/-2 gap and bad
  pixels stay as they are.
* **EDF** (ESRF, a ``{`` header with ``EDF_`` or ``HeaderID`` keys), read by fabio; every frame.
* **HDF5 / NeXus** (``\\x89HDF``), read by h5py with the filters of ``hdf5plugin`` (Eiger bitshuffle/LZ4, LZ4,
  Blosc, ...): the image dataset is NeXus ``/entry/data/data`` when it exists, else the largest 2D/3D numeric
  dataset (masks, flat fields and dark images excluded); the first axis of a 3D dataset is frames. An Eiger
  ``pixel_mask`` of the frames' shape (``/entry/instrument/detector/pixel_mask`` or
  ``.../detectorSpecific/pixel_mask``; nonzero = bad) becomes every frame's mask.
* **NPY** (``\\x93NUMPY``): one 2D array (a ``(1, rows, cols)`` array is squeezed); 1D and 3D+ arrays are
  refused (stacks go in multi-frame TIFF, EDF or HDF5 files).
* **PNG** (``\\x89PNG``): greyscale, 8-bit (uint8) or 16-bit (kept as uint16); colour images are refused (a
  colour map cannot be undone).
* **gzip / bzip2** (magic bytes): any of the above compressed once (``.tif.gz``, ``.cbf.bz2``), inflated in
  chunks within :data:`INFLATED_BYTES_PER_PIXEL` bytes per pixel the request may still decode (a bigger output is
  refused with :class:`TooManyFrames` before it is allocated; see :mod:`matserve.codecs.compressed`).
* **Headerless raw** pixels, when the bytes are in no format above: with the request's ``shape`` and ``dtype``,
  or of exactly one frame of a known detector (see :mod:`matserve.codecs.raw_frames`).

Sizes are bounded before the pixels are decoded (:class:`FrameBudget`: frames and pixels per request, from the
TIFF pages, PNG header, NPY header, CBF/EDF headers, HDF5 dataset shapes and raw byte counts), so a small
compressed file cannot expand into gigabytes. An HDF5 file must be self-contained (no external storage, virtual
datasets, external or user-defined links; see :mod:`matserve.codecs.hdf5_safety`).

A frame of a known Pilatus or Eiger shape whose module-gap rows and columns are all exactly 0 (a file converted by
other software) gets the gaps masked (:mod:`matserve.codecs.detector_layouts`); other shapes never are.

Setup
-----
Where a file records the measurement setup, every frame carries it (:attr:`Frame.setup`, see
:class:`~matserve.codecs.scattering.Setup`), as the sorter's network uses the detector's q span. Its ``source``
names, per value, the header field it was read from and the unit (``inferred`` when the file gave none and the
unit was decided from plausibility; see :mod:`matserve.codecs.detector_setup`):

* CBF: the Pilatus mini-header (``# Detector_distance 0.25 m``, ``# Wavelength 1.0332 A``,
  ``# Pixel_size 172e-6 m x 172e-6 m``);
* TIFF: the same Pilatus text in the ImageDescription tag (Pilatus, NSLS-II); SAXSLAB/Xenocs ``<param>`` XML
  (``detector_dist``, ``wavelength``, ``det_pixel_size``); the MarCCD frame header (``xtal_to_detector``,
  ``source_wavelength``, ``pixelsize_x``); see :mod:`matserve.codecs.detector_headers`. A Pilatus header with
  ``# Beam_xy (0.00, 0.00)`` was never given the geometry: its distance and wavelength (camserver defaults) are
  not taken;
* EDF: the ESRF keys ``SampleDistance`` (m), ``WaveLength`` (m) and ``PSize_1``/``PSize_2`` (m), the variants
  ``Distance``, ``Wavelength``, ``Energy``, ``PixelSize`` (units by plausibility), and a Pilatus text header in
  ``title``;
* HDF5/NeXus: the NXdetector ``distance`` / ``detector_distance`` and ``x_pixel_size``; the NXmonochromator
  ``wavelength`` or ``energy``; ``/entry/instrument/beam/incident_wavelength`` or ``incident_energy``; the
  source's ``energy`` (only with ``units``); under ``/entry/instrument`` or any group of that NX_class, in the
  unit of the ``units`` attribute (m, cm, mm, um, nm, angstrom; eV, keV; energies become wavelengths).

A value that is missing, unparsable or outside :data:`~matserve.codecs.scattering.SETUP_LIMITS` (a header's
distance of 0, say) is left unknown; NPY, PNG and raw files carry none.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matserve.codecs.compressed import TooLarge, compression_of, inflate
from matserve.codecs.detector_headers import setup_from_tiff
from matserve.codecs.detector_layouts import zero_gap_mask
from matserve.codecs.detector_setup import (
    PILATUS_HEADER,
    setup_from_edf_header,
    setup_from_nexus,
    setup_from_pilatus_header,
)
from matserve.codecs.frame_budget import (  # noqa: F401 - re-exported: the readers' budget and its 413
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    FRAMES_SETTING,
    PIXELS_SETTING,
    FrameBudget,
    TooManyFrames,
)
from matserve.codecs.hdf5_safety import Hdf5Refused, check_upload, scrub_server_paths
from matserve.codecs.npy import NpyError, array_view, read_header
from matserve.codecs.raw_frames import ACCEPTED_RAW, RawLayout, read_raw
from matserve.codecs.scattering import ImageError, Setup, check_shape

ACCEPTED_FORMATS = (
    "TIFF (.tif/.tiff incl. MarCCD/Rayonix .mccd, every page a frame), CBF (.cbf, Pilatus/Dectris), EDF (.edf, "
    "every frame), HDF5/NeXus (.h5/.hdf5/.nxs: /entry/data/data or the largest 2D/3D dataset, Eiger bitshuffle/LZ4 "
    "included), NPY (.npy, one 2D array), PNG (8/16-bit greyscale), any of them gzip- or bzip2-compressed (.gz, "
    ".bz2), and " + ACCEPTED_RAW
)
"""What :func:`read_frames` reads, for error messages."""
NEXUS_DATA = "/entry/data/data"
PIXEL_MASK_PATHS = ("/entry/instrument/detector/pixel_mask", "/entry/instrument/detector/detectorSpecific/pixel_mask")
"""Where Eiger/NeXus files keep the detector's bad-pixel mask (nonzero = bad), looked up in this order."""
_NOT_IMAGES = ("mask", "flatfield", "flat_field", "dark", "countrate", "gain", "pedestal", "background")
"""HDF5 dataset names (substrings, lower case) never taken as the image when searching for the largest one."""
_SNIFF_BYTES = 4096
INFLATED_BYTES_PER_PIXEL = 4
"""A compressed upload may inflate to this many bytes per pixel the request may still decode (32-bit pixels), plus
:data:`INFLATED_HEADER_BYTES`."""
INFLATED_HEADER_BYTES = 1 << 20


class UnsupportedFormat(ImageError):
    """Bytes that are none of the accepted formats (HTTP 415)."""


@dataclass(frozen=True)
class Frame:
    """One detector image of an upload.

    Attributes
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` in the file's own dtype (e.g. int32 CBF, uint32 Eiger HDF5, float32 EDF).
    mask : numpy.ndarray or None
        ``(rows, cols)``, nonzero = bad pixel (from the file, e.g. an Eiger ``pixel_mask``, or from the request).
    label : str
        Names the frame in messages and results: ``name`` for a one-frame file, ``name[frame k]`` (0-based)
        for frame ``k`` of a multi-frame one.
    setup : Setup
        The measurement setup the file records (see the module docstring); all ``None`` when it records none.
    """

    image: np.ndarray
    mask: np.ndarray | None
    label: str
    setup: Setup = field(default_factory=Setup)


def sniff_format(data: bytes) -> str | None:
    """``"tiff"``, ``"cbf"``, ``"edf"``, ``"hdf5"``, ``"npy"`` or ``"png"`` from the first bytes, else ``None``."""
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"###CBF") or b"_array_data" in head:
        return "cbf"
    if head.lstrip()[:1] == b"{" and (b"EDF_" in head or b"HeaderID" in head):
        return "edf"
    return None


def read_frames(
    data: bytes,
    filename: str | None = None,
    budget: FrameBudget | None = None,
    declared: str | None = None,
    raw: RawLayout | None = None,
) -> list[Frame]:
    """Every frame of one uploaded file.

    Parameters
    ----------
    data : bytes
        The file's bytes; the format is recognised from them (see the module docstring).
    filename : str, optional
        Names the frames (``file.tif``, ``file.tif[frame 2]``); default ``body``.
    budget : FrameBudget, optional
        Frames and pixels the request may still carry (shared by the files of a multipart request); default
        :data:`DEFAULT_MAX_FRAMES` and :data:`DEFAULT_MAX_PIXELS` for this file alone.
    declared : str, optional
        The declared content type (only used in messages).
    raw : RawLayout, optional
        ``shape`` and ``dtype`` for headerless raw bytes (used only when the bytes are in no other format).

    Returns
    -------
    list of Frame
        In file order (TIFF pages, EDF frames, the first axis of an HDF5 dataset).

    Raises
    ------
    UnsupportedFormat
        None of the accepted formats (the message lists them).
    TooManyFrames
        Over the budget (also: a compressed file that would inflate beyond it).
    ImageError
        A file of a known format that is corrupt, truncated, colour, or holds no usable 2D image.
    """
    name = filename or "body"
    budget = budget or FrameBudget()
    kind = sniff_format(data)
    compression = compression_of(data) if kind is None else None
    if compression is not None:
        data = _inflated(data, compression, name, budget)
        kind = sniff_format(data)
    if kind is None:
        frames = _read_raw(data, name, budget, raw)
        if frames is not None:
            return frames
        declared_text = f" (declared {declared})" if declared else ""
        inside = f" inside the {compression} compression" if compression else ""
        found = "it is empty" if not data else f"it starts with {data[:16]!r}{inside}"
        raise UnsupportedFormat(f"{name}{declared_text} is not a detector image file in an accepted format ({found}); "
                                f"accepted: {ACCEPTED_FORMATS}")  # fmt: skip
    reader = {"tiff": _read_tiff, "cbf": _read_cbf, "edf": _read_edf, "hdf5": _read_hdf5, "npy": _read_npy,
              "png": _read_png}[kind]  # fmt: skip
    try:
        return _with_gap_masks(reader(data, name, budget))
    except ImageError:
        raise
    except Exception as error:  # decoders raise many types on corrupt files
        detail = f"{type(error).__name__}: {scrub_server_paths(str(error))}" if str(error) else type(error).__name__
        what = f"{kind.upper()} ({compression}-compressed)" if compression else kind.upper()
        raise ImageError(f"{name} cannot be read as {what} ({detail}); "
                         f"is the file complete? Accepted: {ACCEPTED_FORMATS}") from None  # fmt: skip


def _inflated(data: bytes, compression: str, name: str, budget: FrameBudget) -> bytes:
    """The bytes of a gzip/bzip2 upload, bounded by what the budget may still decode (one level only)."""
    bound = budget.pixels_left() * INFLATED_BYTES_PER_PIXEL + INFLATED_HEADER_BYTES
    try:
        inflated = inflate(data, compression, bound, name)
    except TooLarge as error:
        raise TooManyFrames(f"{error} ({PIXELS_SETTING}: at most {budget.max_pixels} decoded pixels per "
                            "request)") from None  # fmt: skip
    inner = compression_of(inflated) if sniff_format(inflated) is None else None
    if inner is not None:
        raise ImageError(f"{name} is {compression}-compressed and holds {inner}-compressed data; one level of "
                         "compression is read: decompress the file once before sending it")  # fmt: skip
    return inflated


def _read_raw(data: bytes, name: str, budget: FrameBudget, raw: RawLayout | None) -> list[Frame] | None:
    """Frames of headerless raw bytes (the request's layout, or a known detector's frame size), else ``None``."""
    read = read_raw(data, name, budget, raw)
    if read is None:
        return None
    arrays, _ = read
    return _with_gap_masks([Frame(array, None, label) for array, label in zip(arrays, _labels(name, len(arrays)),
                                                                                strict=True)])  # fmt: skip


def _with_gap_masks(frames: list[Frame]) -> list[Frame]:
    """Frames of a known detector's shape whose module gaps are all 0 get them masked (see
    :mod:`matserve.codecs.detector_layouts`), or'ed into their own mask."""
    result = []
    for frame in frames:
        gaps = zero_gap_mask(frame.image)
        if gaps is None:
            result.append(frame)
            continue
        mask = gaps if frame.mask is None or frame.mask.shape != gaps.shape else gaps | frame.mask.astype(bool)
        result.append(Frame(frame.image, mask, frame.label, frame.setup))
    return result


def _labels(name: str, count: int) -> list[str]:
    return [name] if count == 1 else [f"{name}[frame {k}]" for k in range(count)]


def _check_frame(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """A 2D numeric image of the accepted size, else :class:`ImageError` naming ``where``."""
    if np.dtype(dtype).kind not in "uifb":
        raise ImageError(f"{where} has dtype {dtype}; detector images are integer or floating-point numbers")
    try:
        check_shape(tuple(int(s) for s in shape))
    except ImageError as error:
        raise ImageError(f"{where}: {error}") from None


def _read_tiff(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    """Every page is counted and checked from its header (shape, colour, dtype, the budget) before any is decoded;
    pages are parsed one by one, so a file of millions of tiny pages stops at the frame limit."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        pages = []
        for page in tiff.pages:
            if getattr(page.keyframe, "is_reduced", False):
                continue
            label = f"{name}[frame {len(pages)}]" if pages else name  # the page count is not known yet
            samples = int(getattr(page.keyframe, "samplesperpixel", 1))
            if samples > 1:
                raise ImageError(f"{label} is a colour TIFF ({samples} samples per pixel); a detector image has one "
                                 "channel (greyscale counts)")  # fmt: skip
            _check_frame(tuple(page.shape), page.dtype, label)
            if pages and tuple(page.shape) != tuple(pages[0].shape):
                raise ImageError(
                    f"{label} is {page.shape}, the first page {pages[0].shape}; frames of one file share a shape"
                )
            budget.check(len(pages) + 1, tuple(page.shape), name, at_least=True)
            pages.append(page)
        if not pages:
            raise ImageError(f"{name} (TIFF) has no image pages")
        budget.take(len(pages), tuple(pages[0].shape), name)
        labels = _labels(name, len(pages))
        setup = setup_from_tiff(pages[0], data)
        return [
            Frame(np.asarray(page.asarray()), None, label, setup) for page, label in zip(pages, labels, strict=True)
        ]


def _fabio_frames(image: Any, name: str, kind: str, data_size: int, budget: FrameBudget) -> list[Frame]:
    """Frames of an opened fabio image (CBF: decoded; EDF: headers read, frames decoded on access)."""
    count = max(int(getattr(image, "nframes", 1) or 1), 1)
    labels = _labels(name, count)
    parts = getattr(image, "_frames", None) or []
    for k, part in enumerate(parts):  # EDF frames know if their data was cut short
        if getattr(part, "incomplete_data", False) or part.start + part.blobsize > data_size:
            raise ImageError(f"{labels[min(k, count - 1)]} ({kind}) is truncated: the file has {data_size} bytes, "
                             "fewer than its header announces; is the upload complete?")  # fmt: skip
    shapes = [tuple(int(s) for s in part._shape) for part in parts if getattr(part, "_shape", None) is not None]
    if shapes:  # EDF: every frame's header shape (the largest, conservatively), before any frame is decoded
        budget.check(len(parts), max(shapes, key=math.prod), name)
    first = image.data
    if first is None:
        raise ImageError(f"{name} ({kind}) holds no image data")
    budget.take(count, tuple(first.shape), name)
    frames = []
    for k, label in enumerate(labels):
        frame = image if k == 0 else image.getframe(k)
        array = np.asarray(frame.data)
        _check_frame(array.shape, array.dtype, label)
        header = getattr(frame, "header", None) or {}
        if kind == "CBF":
            setup, mask = setup_from_pilatus_header(str(header.get(PILATUS_HEADER, ""))), None
        else:
            setup, mask = setup_from_edf_header(header), edf_dummy_mask(array, header)
        frames.append(Frame(array, mask, label, setup))
    return frames


def edf_dummy_mask(array: np.ndarray, header: Any) -> np.ndarray | None:
    """Pixels an EDF header's ``Dummy`` value marks as invalid (``|value - Dummy| <= DDummy``; uint8, 1 = bad), or
    ``None`` when the header names no dummy (missing, unparsable, or 0: the ESRF convention for "none")."""
    try:
        dummy = float(str(header.get("Dummy", "0")).split()[0])
        tolerance = abs(float(str(header.get("DDummy", "0")).split()[0]))
    except (ValueError, IndexError):
        return None
    if dummy == 0 or not math.isfinite(dummy) or not math.isfinite(tolerance):
        return None
    bad = np.abs(array.astype(np.float64, copy=False) - dummy) <= tolerance
    return bad.astype(np.uint8) if bad.any() else None


_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"
_CBF_DIMENSIONS = re.compile(rb"X-Binary-Size-(Fastest|Second)-Dimension:\s*(\d+)")


def _read_cbf(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    from fabio import cbfimage, fabioutils

    end = data.find(_CBF_BINARY_START)
    declared = dict(_CBF_DIMENSIONS.findall(data[: end if end >= 0 else _SNIFF_BYTES]))
    if b"Fastest" in declared and b"Second" in declared:  # fabio decodes as soon as it reads: check the header first
        budget.check(1, (int(declared[b"Second"]), int(declared[b"Fastest"])), name)
    image = cbfimage.CbfImage()
    image.read(fabioutils.BytesIO(data))
    return _fabio_frames(image, name, "CBF", len(data), budget)


def _read_edf(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    from fabio import edfimage, fabioutils

    image = edfimage.EdfImage()
    image.read(fabioutils.BytesIO(data))  # fabio's BytesIO: EDF frames are read lazily under its lock
    return _fabio_frames(image, name, "EDF", len(data), budget)


def _read_npy(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    try:
        header = read_header(data, name)
    except NpyError as error:
        raise ImageError(str(error)) from None
    shape = header.shape
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    elif len(shape) != 2:
        raise ImageError(
            f"{name} holds a {len(shape)}D array of shape {tuple(shape)}; an NPY file is one 2D detector image "
            "(1D and 3D arrays are refused): send a stack as a multi-frame TIFF, EDF or HDF5 file, or one .npy per frame"
        )
    _check_frame(shape, header.dtype, name)
    budget.take(1, shape, name)
    try:
        array = array_view(data, header, name)
    except NpyError as error:
        raise ImageError(str(error)) from None
    return [Frame(np.array(array.reshape(shape)), None, name)]  # a copy: later steps may write to frames


_PNG_MODES = {"1": None, "L": np.uint8, "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I": None,
              "F": None}  # fmt: skip
"""Greyscale Pillow modes read from PNGs, with the dtype to keep (None: as numpy gives it)."""


def png_declared_size(data: bytes) -> tuple[int, int] | None:
    """``(rows, cols)`` a PNG's IHDR chunk declares (it must come first), else ``None``."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    cols, rows = struct.unpack(">II", data[16:24])
    return int(rows), int(cols)


def _read_png(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    from PIL import Image

    declared = png_declared_size(data)
    if declared is not None:
        budget.check(1, declared, name)
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
        raise TooManyFrames(f"{name}: too many pixels: the PNG header declares more than {2 * Image.MAX_IMAGE_PIXELS} "
                            f"pixels; at most {budget.max_pixels} decoded pixels per request "
                            f"({PIXELS_SETTING})") from None  # fmt: skip
    with opened as image:
        cols, rows = image.size
        if image.mode not in _PNG_MODES:
            raise ImageError(f"{name} is a {image.mode} PNG; a detector image is greyscale (8 or 16 bits per pixel): a "
                             "colour rendering cannot be turned back into counts")  # fmt: skip
        _check_frame((rows, cols), np.dtype(np.uint16), name)
        budget.take(1, (rows, cols), name)
        array = np.asarray(image)
        wanted = _PNG_MODES[image.mode]
        if wanted is not None:
            array = array.astype(wanted, copy=False)
    return [Frame(np.ascontiguousarray(array), None, name)]


def _read_hdf5(data: bytes, name: str, budget: FrameBudget) -> list[Frame]:
    import h5py
    import hdf5plugin  # noqa: F401 - registers the Eiger bitshuffle/LZ4 (and other) HDF5 filters

    with h5py.File(io.BytesIO(data), "r") as handle:
        try:
            check_upload(handle, name)  # before any path is looked up: a lookup resolves the links it crosses
        except Hdf5Refused as error:
            raise (TooManyFrames if error.too_large else ImageError)(str(error)) from None
        path, dataset = _image_dataset(handle, name)
        shape = tuple(int(s) for s in dataset.shape)
        where = f"{name} ({path})"
        if len(shape) == 3:
            count, frame_shape = shape[0], shape[1:]
        else:
            count, frame_shape = 1, shape
        if count == 0:
            raise ImageError(f"{where} holds no frames (shape {shape})")
        _check_frame(frame_shape, dataset.dtype, where)
        budget.take(count, frame_shape, name)
        mask = _pixel_mask(handle, frame_shape)
        setup = setup_from_nexus(handle)
        labels = _labels(name, count)
        if len(shape) == 2:
            return [Frame(np.asarray(dataset[()]), mask, labels[0], setup)]
        return [Frame(np.asarray(dataset[k]), mask, labels[k], setup) for k in range(count)]


def _image_dataset(handle: Any, name: str) -> tuple[str, Any]:
    """``(path, dataset)`` of the image data: NeXus ``/entry/data/data``, else the largest 2D/3D numeric dataset."""
    import h5py

    if NEXUS_DATA in handle and isinstance(handle[NEXUS_DATA], h5py.Dataset):
        dataset = handle[NEXUS_DATA]
        if dataset.ndim in (2, 3) and dataset.dtype.kind in "uifb":
            return NEXUS_DATA, dataset
    found: list[tuple[int, int, str]] = []

    def visit(path: str, item: Any) -> None:
        if not isinstance(item, h5py.Dataset) or item.ndim not in (2, 3) or item.dtype.kind not in "uifb":
            return
        leaf = path.rsplit("/", 1)[-1].lower()
        if any(word in leaf for word in _NOT_IMAGES):
            return
        found.append((-int(np.prod(item.shape)), -item.ndim, "/" + path))

    handle.visititems(visit)
    if not found:
        raise ImageError(f"{name} (HDF5) has no 2D or 3D numeric dataset to read as detector images (looked for "
                         f"{NEXUS_DATA}, then the largest one)")  # fmt: skip
    path = sorted(found)[0][2]
    return path, handle[path]


def _pixel_mask(handle: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The detector's ``pixel_mask`` (nonzero = bad) when it has the frames' shape, else ``None``."""
    import h5py

    for path in PIXEL_MASK_PATHS:
        item = handle.get(path)
        if isinstance(item, h5py.Dataset) and tuple(item.shape) == tuple(shape) and item.dtype.kind in "uifb":
            return np.asarray(item[()])
    return None
