"""h5ebsd scans (kikuchipy's own, EDAX, Bruker Nano, Oxford Instruments H5OINA) read from memory, within budget.

:func:`read_h5ebsd_scan` opens the uploaded bytes in memory (no temporary file, so no server path can appear in
a message), checks them with :func:`~matserve.codecs.hdf5_safety.check_upload` (self-contained; all datasets
together at most the request's pixel budget as float32), picks kikuchipy's reader by the file's top-level
``manufacturer`` (as ``kikuchipy.load`` does) and reads the first scan with it. The scan shape the header declares
(kikuchipy allocates it, zero-padding a dataset that is shorter) is checked against the budget before the
patterns are read. kikuchipy is imported on first use (~10-20 s).
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Any

import numpy as np

from matserve.codecs.ebsd import MAX_PATTERN_SIDE, SIZE_RULE, EbsdInputError, EbsdTooLarge
from matserve.codecs.ebsd_uploads import PIXELS_SETTING, PixelBudget, reduce_scan
from matserve.codecs.hdf5_safety import Hdf5Refused, check_upload, scrub_server_paths

DEFAULT_KIKUCHIPY_PC = (0.5, 0.5, 0.5)
"""kikuchipy's default detector PC: a file carrying exactly this is taken to have no PC of its own."""
H5EBSD_READERS = {
    "kikuchipy": ("kikuchipy.io.plugins.kikuchipy_h5ebsd._api", "KikuchipyH5EBSDReader"),
    "edax": ("kikuchipy.io.plugins.edax_h5ebsd._api", "EDAXH5EBSDReader"),
    "bruker nano": ("kikuchipy.io.plugins.bruker_h5ebsd._api", "BrukerH5EBSDReader"),
    "oxford instruments": ("kikuchipy.io.plugins.oxford_h5ebsd._api", "OxfordH5EBSDReader"),
}
"""kikuchipy 0.13's h5ebsd reader classes by the file's top-level ``manufacturer`` (what ``kikuchipy.load`` picks)."""
H5EBSD_ACCEPTED = "accepted: h5ebsd (kikuchipy's EBSD.save), EDAX, Bruker Nano and Oxford Instruments (H5OINA) HDF5"


class _Upload(io.BytesIO):
    """The uploaded bytes as a file for h5py; readers that print their file name print ``the HDF5 file``."""

    def __repr__(self) -> str:
        return "the HDF5 file"

    __str__ = __repr__


@functools.cache
def _h5ebsd_reader(manufacturer: str) -> type:
    """kikuchipy's reader class for ``manufacturer``, checking the scan's size against the request's budget before
    it reads the patterns (kikuchipy allocates the shape the header declares, padding a short dataset)."""
    import importlib

    module, name = H5EBSD_READERS[manufacturer]
    base = getattr(importlib.import_module(module), name)

    class Budgeted(base):  # type: ignore[misc, valid-type]
        budget: PixelBudget  # set on each instance before read()

        def get_data(self, group: Any, data_shape: tuple, lazy: bool = False, indices: Any = None) -> np.ndarray:
            try:
                rows, cols, height, width = (int(v) for v in data_shape)
            except (TypeError, ValueError):
                raise EbsdInputError(f"the HDF5 file's header declares a scan of shape {data_shape!r}; expected four "
                                     "positive integers (rows, cols, pattern height, pattern width)") from None  # fmt: skip
            if min(rows, cols, height, width) < 1:
                raise EbsdInputError(f"the HDF5 file's header declares a scan of {rows}x{cols} patterns of "
                                     f"{height}x{width} px; every size must be at least 1")  # fmt: skip
            if height > MAX_PATTERN_SIDE or width > MAX_PATTERN_SIDE:
                raise EbsdTooLarge(f"the HDF5 scan's patterns are {height}x{width} px, over the limit of "
                                   f"{MAX_PATTERN_SIDE}x{MAX_PATTERN_SIDE}; {SIZE_RULE}")  # fmt: skip
            self.budget.take(rows * cols, height, width, "the HDF5 scan")
            return super().get_data(group, data_shape, lazy=False, indices=indices)

    Budgeted.__name__ = Budgeted.__qualname__ = name
    return Budgeted


def _manufacturer(handle: Any) -> str | None:
    """The file's top-level ``manufacturer`` dataset (any case), lower case, as kikuchipy reads it."""
    import h5py

    for key in handle:
        item = handle.get(key)
        if key.strip().lower() == "manufacturer" and isinstance(item, h5py.Dataset) and item.size == 1:
            value = np.asarray(item[()]).reshape(-1)[0]
            return (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip().lower()
    return None


def read_h5ebsd_scan(data: bytes, budget: PixelBudget) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """Read an h5ebsd scan from memory with kikuchipy's reader for its manufacturer (kikuchipy is imported here).

    The file is checked first (:func:`~matserve.codecs.hdf5_safety.check_upload`: self-contained, its datasets at
    most the budget's pixels as float32), then the scan shape its header declares is checked against the budget
    before the patterns are read.
    """
    import h5py

    try:
        with h5py.File(_Upload(data), "r") as handle:
            check_upload(handle, "the HDF5 file", 4 * budget.max_pixels, f"{PIXELS_SETTING} x 4 bytes")
            manufacturer = _manufacturer(handle)
    except Hdf5Refused as error:
        raise (EbsdTooLarge if error.too_large else EbsdInputError)(str(error)) from None
    except Exception as error:  # h5py raises several types on broken files
        raise EbsdInputError(
            f"the HDF5 file cannot be read by kikuchipy ({_describe(error)}); {H5EBSD_ACCEPTED}"
        ) from None
    if manufacturer not in H5EBSD_READERS:
        found = "none" if manufacturer is None else repr(manufacturer[:80])
        raise EbsdInputError(f"the HDF5 file cannot be read by kikuchipy: its top-level 'manufacturer' is {found}, "
                             f"not one of {', '.join(H5EBSD_READERS)}; {H5EBSD_ACCEPTED}")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader_class = _h5ebsd_reader(manufacturer)
        reader = None
        try:
            arguments = {"processed": True} if manufacturer == "oxford instruments" else {}  # kikuchipy's default
            reader = reader_class(_Upload(data), **arguments)
            reader.budget = budget
            (scan,) = reader.read(lazy=False)  # the first scan group, as kikuchipy.load reads it
        except EbsdInputError:
            raise
        except Exception as error:  # readers raise many types on foreign or broken files
            raise EbsdInputError(f"the HDF5 file cannot be read by kikuchipy ({_describe(error)}); "
                                 f"{H5EBSD_ACCEPTED}") from None  # fmt: skip
        finally:
            if reader is not None:
                reader.file.close()
    array = np.asarray(scan["data"])
    detector = scan["detector"]
    del scan
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise EbsdInputError(f"the HDF5 scan has shape {list(array.shape)}; expected (rows, cols, h, w)")
    pc = np.asarray(detector.pc, dtype=np.float64).reshape(-1, 3)
    file_pc = None
    if not np.allclose(pc, DEFAULT_KIKUCHIPY_PC):
        file_pc = pc[0] if len(pc) == 1 or np.allclose(pc, pc[0]) else pc
        if file_pc.ndim == 2 and len(file_pc) != array.shape[0] * array.shape[1]:
            file_pc = pc.mean(axis=0)
    tilts = {"sample_tilt_deg": float(detector.sample_tilt), "detector_tilt_deg": float(detector.tilt)}
    return reduce_scan(array), file_pc, tilts


def _describe(error: Exception) -> str:
    """``Type: message`` of a library error, without this server's paths."""
    text = scrub_server_paths(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
