"""The measurement setup in TIFF-based detector files: Pilatus text headers, SAXSLAB/Xenocs XML and MarCCD headers.

Used by :mod:`matserve.codecs.detector_files` for every TIFF upload (``.tif``, ``.tiff``, ``.mccd``):

* **Pilatus / NSLS-II** (camserver, areaDetector, TVX): the ImageDescription tag holds the Pilatus text header
  (``# Wavelength 0.7701 A``, ``# Detector_distance 0.277 m``, ``# Pixel_size 172e-6 m x 172e-6 m``), read by
  :func:`matserve.codecs.detector_setup.pilatus_values`;
* **SAXSLAB / Xenocs** (Ganesha, Xeuss): an ASCII tag holds ``<SAXSLABparameters>`` XML of
  ``<param name="...">value</param>``: ``detector_dist`` (mm), ``wavelength`` / ``saxsconf_wavelength``
  (Angstrom), ``det_pixel_size`` (m, ``"172e-6 172e-6"``) or ``pixelsize`` / ``saxsconf_det_pixsizez`` (mm). The
  XML is matched by a regular expression, never parsed (no entities, no external references);
* **MarCCD / Rayonix** (``.mccd``): the 3072-byte ``frame_header`` at byte 1024 (TIFF tag 34710 points at it,
  ``MMX`` at byte 1028): ``xtal_to_detector`` (then ``start_xtal_to_detector``; 1/1000 mm) at header byte 640,
  ``pixelsize_x`` (nm) at 772 and ``source_wavelength`` (femtometres) at 908, 32-bit integers in the header's
  byte order (``header_byte_order`` at byte 28: 1234 little-, 4321 big-endian). A 0 (unset) is unknown.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from matserve.codecs.detector_setup import Found, add, pilatus_values, setup_of
from matserve.codecs.scattering import Setup

MARCCD_TAG = 34710
"""TIFF tag of MarCCD/Rayonix files: the offset of the frame header (1024)."""
MARCCD_HEADER_OFFSET = 1024
MARCCD_HEADER_SIZE = 3072
_MARCCD_NAME = b"MMX"
_MARCCD_FIELDS = (("distance_m", 640, 1e-3, "mm", "xtal_to_detector"),
                  ("distance_m", 696, 1e-3, "mm", "start_xtal_to_detector"),
                  ("pixel_size_m", 772, 1.0, "nm", "pixelsize_x"),
                  ("wavelength_angstrom", 908, 1e-5, "A", "source_wavelength"))  # fmt: skip
"""``(setup value, byte offset in the frame header, factor to the unit, unit, field)``: 1/1000 mm -> mm, nm,
femtometres -> Angstrom."""
_SAXSLAB_PARAM = re.compile(r"<param\s+name\s*=\s*\"([^\"<>]{1,64})\"\s*>([^<]{0,256})</param>")
_SAXSLAB_KEYS = (("distance_m", "detector_dist", "mm"), ("wavelength_angstrom", "wavelength", "A"),
                 ("wavelength_angstrom", "saxsconf_wavelength", "A"), ("pixel_size_m", "det_pixel_size", "m"),
                 ("pixel_size_m", "pixelsize", "mm"), ("pixel_size_m", "saxsconf_det_pixsizez", "mm"))  # fmt: skip
"""``(setup value, SAXSLAB parameter, its unit)``, in order of preference."""
_MAX_TAG_TEXT = 1 << 20
"""ASCII tag text searched for setup values, characters."""
_DESCRIPTION_TAG = 270
_NONE = Setup()


def is_marccd(data: bytes) -> bool:
    """Whether a TIFF's bytes carry a MarCCD frame header (``MMX`` at byte 1028)."""
    start = MARCCD_HEADER_OFFSET + 4
    return len(data) >= MARCCD_HEADER_OFFSET + MARCCD_HEADER_SIZE and data[start : start + 3] == _MARCCD_NAME


def marccd_values(data: bytes, found: Found | None = None) -> Found:
    """The setup values of a MarCCD frame header (see the module docstring), added to ``found``."""
    found = {} if found is None else found
    if not is_marccd(data):
        return found
    header = data[MARCCD_HEADER_OFFSET : MARCCD_HEADER_OFFSET + MARCCD_HEADER_SIZE]
    order = struct.unpack_from("<I", header, 28)[0]
    endian = ">" if order == 4321 else "<"
    for name, offset, factor, unit, field in _MARCCD_FIELDS:
        value = struct.unpack_from(endian + "i", header, offset)[0]
        if value > 0:
            add(found, name, value * factor, unit, f"MarCCD {field}")
    return found


def saxslab_values(text: str, found: Found | None = None) -> Found:
    """The setup values of SAXSLAB/Xenocs ``<param name="...">`` XML (see the module docstring)."""
    found = {} if found is None else found
    params: dict[str, str] = {}
    for match in _SAXSLAB_PARAM.finditer(text[:_MAX_TAG_TEXT]):
        params.setdefault(match.group(1).strip(), match.group(2).strip())
    for name, key, unit in _SAXSLAB_KEYS:
        words = params.get(key, "").split()
        try:
            value = float(words[0]) if words else None
        except ValueError:
            value = None
        if value is not None:
            add(found, name, value, unit, f"SAXSLAB {key}")
    return found


def _ascii_tags(page: Any) -> list[tuple[int, str]]:
    """``(code, text)`` of the page's ASCII tags that may hold a setup (``#`` or ``<param``), ImageDescription
    first."""
    texts = []
    for tag in page.tags.values():
        value = tag.value
        if isinstance(value, bytes):
            value = value[:_MAX_TAG_TEXT].decode("latin-1")
        if isinstance(value, str) and ("#" in value or "<param" in value):
            texts.append((int(tag.code), value[:_MAX_TAG_TEXT]))
    texts.sort(key=lambda item: item[0] != _DESCRIPTION_TAG)
    return texts


def setup_from_tiff(page: Any, data: bytes) -> Setup:
    """The setup a TIFF file records (its first page's tags; MarCCD header); see the module docstring.

    Parameters
    ----------
    page : tifffile.TiffPage
        The first page (its tags are already parsed by tifffile, within the upload).
    data : bytes
        The file's bytes (for the MarCCD frame header).
    """
    found: Found = {}
    if is_marccd(data):
        marccd_values(data, found)
    texts = _ascii_tags(page)
    if not found and not texts:
        return _NONE
    for code, text in texts:
        if "<param" in text:
            saxslab_values(text, found)
        if "#" in text:
            pilatus_values(text, "TIFF ImageDescription" if code == _DESCRIPTION_TAG else f"TIFF tag {code}", found)
    return setup_of(found)
