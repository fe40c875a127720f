"""The measurement setup recorded in detector file headers (CBF mini-header, EDF keys, NeXus instrument group).

Used by :mod:`matserve.codecs.detector_files`; see its module docstring for the keys, paths and units read. A value
that is missing, unparsable or outside :data:`~matserve.codecs.scattering.SETUP_LIMITS` is left unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from matserve.codecs.scattering import Setup, setup_value_error

PILATUS_HEADER = "_array_data.header_contents"
"""The CBF item holding the Pilatus mini-header (fabio's ``header`` key)."""
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PILATUS_FIELDS = {
    "distance_m": (re.compile(r"#\s*Detector_distance\s+" + _NUMBER + r"\s*m\b"), 1.0),
    "wavelength_angstrom": (re.compile(r"#\s*Wavelength\s+" + _NUMBER + r"\s*A\b"), 1.0),
    "pixel_size_m": (re.compile(r"#\s*Pixel_size\s+" + _NUMBER + r"\s*m\b"), 1.0),
}
_EDF_FIELDS = {"distance_m": ("SampleDistance", 1.0), "wavelength_angstrom": ("WaveLength", 1e10),
               "pixel_size_m": ("PSize_1", 1.0)}  # fmt: skip
_NEXUS_FIELDS = {
    "distance_m": (("/entry/instrument/detector/distance", "/entry/instrument/detector/detector_distance"), "m"),
    "wavelength_angstrom": (("/entry/instrument/beam/incident_wavelength",), "angstrom"),
    "pixel_size_m": (("/entry/instrument/detector/x_pixel_size",), "m"),
}
_METRES_PER_UNIT = {"m": 1.0, "metre": 1.0, "meter": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "µm": 1e-6,
                    "micron": 1e-6, "micrometre": 1e-6, "micrometer": 1e-6, "nm": 1e-9, "a": 1e-10, "å": 1e-10,
                    "angstrom": 1e-10}  # fmt: skip


def _known(values: Mapping[str, float | None], source: str) -> Setup:
    """A :class:`Setup` of the values within :data:`SETUP_LIMITS` (the others unknown)."""
    kept = {name: float(value) for name, value in values.items()
            if value is not None and setup_value_error(name, value) is None}  # fmt: skip
    return Setup(**kept, source=source if kept else "")


def setup_from_pilatus_header(text: str) -> Setup:
    """The setup in a Pilatus CBF mini-header (``# Detector_distance 0.25 m`` etc.; see the module docstring)."""
    values: dict[str, float | None] = {}
    for name, (pattern, scale) in _PILATUS_FIELDS.items():
        match = pattern.search(text)
        values[name] = float(match.group(1)) * scale if match else None
    return _known(values, "header")


def setup_from_edf_header(header: Mapping[str, Any]) -> Setup:
    """The setup in an EDF header's ESRF keys (``SampleDistance``, ``WaveLength``, ``PSize_1``; metres)."""
    values: dict[str, float | None] = {}
    for name, (key, scale) in _EDF_FIELDS.items():
        try:
            values[name] = float(str(header[key]).split()[0]) * scale
        except (KeyError, ValueError, IndexError):
            values[name] = None
    return _known(values, "header")


def setup_from_nexus(handle: Any) -> Setup:
    """The setup in a NeXus/Eiger file's instrument group (see the module docstring for paths and units)."""
    import h5py

    values: dict[str, float | None] = {}
    for name, (paths, default_unit) in _NEXUS_FIELDS.items():
        values[name] = None
        for path in paths:
            item = handle.get(path)
            if not isinstance(item, h5py.Dataset) or item.size != 1 or item.dtype.kind not in "uif":
                continue
            unit = item.attrs.get("units", default_unit)
            unit = (unit.decode() if isinstance(unit, bytes) else str(unit)).strip().lower()
            if unit not in _METRES_PER_UNIT:
                continue
            metres = float(np.asarray(item[()]).reshape(-1)[0]) * _METRES_PER_UNIT[unit]
            values[name] = metres * 1e10 if name == "wavelength_angstrom" else metres
            break
    return _known(values, "header")
