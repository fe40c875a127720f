"""The measurement setup recorded in detector file headers: units, the Pilatus text header, EDF keys and NeXus.

Used by :mod:`matserve.codecs.detector_files` (and :mod:`matserve.codecs.detector_headers` for TIFF headers); see
its module docstring for the keys, paths and units read. Every value found carries where it came from
(``header:EDF WaveLength (m)``), so :attr:`Setup.source <matserve.codecs.scattering.Setup.source>` says it per
value. A value that is missing, unparsable or outside :data:`~matserve.codecs.scattering.SETUP_LIMITS` is left
unknown.

Units: lengths in m, cm, mm, um (µm, micron), nm or Angstrom (A, Å); energies in eV or keV, converted with
``lambda [Angstrom] = 12.398419843320026 / E [keV]``. A value written without a unit is read by plausibility and
its source says so, e.g. ``(mm, inferred)``: a distance up to 15 is metres, above it millimetres (250 -> 0.25 m);
a wavelength below 1e-6 is metres, else Angstrom; an energy of 0.5-300 is keV, of 500-300000 eV; a pixel size
below 0.0025 is metres, below 2.5 millimetres, else micrometres.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from matserve.codecs.scattering import Setup, setup_value_error

PILATUS_HEADER = "_array_data.header_contents"
"""The CBF item holding the Pilatus mini-header (fabio's ``header`` key)."""
HC_KEV_ANGSTROM = 12.398419843320026
"""``h c``, keV Angstrom: ``lambda [Angstrom] = HC_KEV_ANGSTROM / E [keV]``."""
Found = dict[str, tuple[float, str]]
"""``{setup name: (value in the units of SETUP_LIMITS, where it came from)}``."""

METRES_PER_UNIT = {"m": 1.0, "metre": 1.0, "meter": 1.0, "metres": 1.0, "meters": 1.0, "cm": 1e-2, "mm": 1e-3,
                   "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometre": 1e-6,
                   "micrometer": 1e-6, "nm": 1e-9, "a": 1e-10, "å": 1e-10, "angstrom": 1e-10,
                   "angstroms": 1e-10}  # fmt: skip
"""Metres per length unit (lower case)."""
KEV_PER_UNIT = {"ev": 1e-3, "kev": 1.0, "mev": 1e3, "gev": 1e6}
"""keV per energy unit (lower case; a storage ring's GeV is refused by the wavelength limits)."""
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PILATUS_FIELDS = {
    "distance_m": ("Detector_distance", r"(mm|cm|m)\b"),
    "wavelength_angstrom": ("Wavelength", r"(A|Å|nm)(?!\w)"),
    "pixel_size_m": ("Pixel_size", r"(um|mm|m)\b"),
}
_PILATUS_PATTERNS = {name: (key, re.compile(r"#\s*" + key + r"[:=]?\s+" + _NUMBER + r"(?:[ \t]*" + unit + ")?"))
                     for name, (key, unit) in _PILATUS_FIELDS.items()}  # fmt: skip
_PILATUS_UNSET_BEAM = re.compile(r"#\s*Beam_xy\s*\(\s*0(?:\.0*)?\s*,\s*0(?:\.0*)?\s*\)")
"""``# Beam_xy (0.00, 0.00)``: the beamline never set the geometry; camserver's default distance and wavelength
(1 m, 1.54 A) are then not taken as the setup."""
_EDF_KEYS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "distance_m": (("SampleDistance", "m"), ("Distance", None), ("DetectorDistance", None),
                   ("Detector_Distance", None), ("SDD", None)),
    "wavelength_angstrom": (("WaveLength", "m"), ("Wavelength", None), ("Lambda", None)),
    "energy": (("Energy", None), ("Energy_keV", "keV"), ("PhotonEnergy", None)),
    "pixel_size_m": (("PSize_1", "m"), ("PSize_2", "m"), ("PixelSize", None), ("Pixel_size", None),
                     ("PixelSize_1", None)),
}  # fmt: skip
"""EDF header keys per setup value, in order of preference, with their unit (``None``: by plausibility)."""
EDF_TEXT_KEYS = ("title", PILATUS_HEADER, "header_contents", "ImageDescription", "description")
"""EDF keys that may hold a Pilatus text header (``# Wavelength 1.0 A``...), read after the keys above."""
_UNSAFE = re.compile(r"[^\x20-\x7e]|[;=]")
"""Characters replaced in sources: non-printable ones, and the separators of :attr:`Setup.source`."""
_MAX_WHERE = 160
"""Longest header location kept in a source, characters."""
_MAX_TEXT = 1 << 20
"""Header text read for setup values, characters (a Pilatus header is < 2 kB)."""


def convert(kind: str, value: float, unit: str | None) -> tuple[float, str] | None:
    """``(value in the units of SETUP_LIMITS, unit label)`` of one header value, or ``None`` if it cannot be read.

    Parameters
    ----------
    kind : str
        ``distance_m``, ``wavelength_angstrom``, ``pixel_size_m`` or ``energy`` (becomes a wavelength).
    value : float
        The number as written.
    unit : str or None
        Its unit (see the module docstring); ``None`` or empty: decided from plausibility (label ``"mm, inferred"``).
    """
    if not np.isfinite(value) or value <= 0:
        return None
    if not unit:
        guessed = _inferred_unit(kind, value)
        if guessed is None:
            return None
        converted = convert(kind, value, guessed)
        return None if converted is None else (converted[0], f"{guessed}, inferred")
    key = unit.strip().lower()
    if kind == "energy":
        if key not in KEV_PER_UNIT:
            return None
        return HC_KEV_ANGSTROM / (value * KEV_PER_UNIT[key]), unit.strip()
    if key not in METRES_PER_UNIT:
        return None
    metres = value * METRES_PER_UNIT[key]
    return (metres * 1e10 if kind == "wavelength_angstrom" else metres), unit.strip()


def _inferred_unit(kind: str, value: float) -> str | None:
    """The unit a value written without one most plausibly has (see the module docstring), else ``None``."""
    if kind == "distance_m":
        return "m" if value <= 15 else "mm" if value <= 1e5 else None
    if kind == "wavelength_angstrom":
        return "m" if value < 1e-6 else "angstrom" if 0.05 <= value <= 20 else None
    if kind == "energy":
        return "keV" if 0.5 <= value <= 300 else "eV" if 500 <= value <= 3e5 else None
    return "m" if value < 0.0025 else "mm" if value < 2.5 else "um" if value <= 2000 else None


def add(found: Found, kind: str, value: float, unit: str | None, where: str) -> None:
    """Put one header value into ``found`` (unless it already holds that setup value, or the value is unusable)."""
    name = "wavelength_angstrom" if kind == "energy" else kind
    if name in found:
        return
    converted = convert(kind, value, unit)
    if converted is None or setup_value_error(name, converted[0]) is not None:
        return
    shown = _UNSAFE.sub("_", where)[:_MAX_WHERE]  # names from the file (NeXus groups) stay printable and short
    found[name] = (float(f"{converted[0]:.12g}"), f"header:{shown} ({converted[1]})")  # no 1e-10 * 1e10 residue


def setup_of(found: Found) -> Setup:
    """A :class:`Setup` of the values found, each with its source."""
    return Setup.from_sources(found)


def pilatus_values(text: str, where: str, found: Found | None = None) -> Found:
    """The setup values of a Pilatus text header (``# Detector_distance 0.25 m`` etc.), added to ``found``.

    Parameters
    ----------
    text : str
        The header (CBF ``_array_data.header_contents``, a TIFF ImageDescription, an EDF ``title``).
    where : str
        Names the header in the sources (``CBF``, ``TIFF ImageDescription``, ``EDF title``).
    """
    found = {} if found is None else found
    text = text[:_MAX_TEXT]
    unset = _PILATUS_UNSET_BEAM.search(text) is not None
    for name, (key, pattern) in _PILATUS_PATTERNS.items():
        if unset and name != "pixel_size_m":
            continue
        match = pattern.search(text)
        if match:
            add(found, name, float(match.group(1)), match.group(2), f"{where} {key}")
    return found


def setup_from_pilatus_header(text: str, where: str = "CBF") -> Setup:
    """The setup in a Pilatus text header (see :func:`pilatus_values`)."""
    return setup_of(pilatus_values(text, where))


def _lookup(header: Mapping[str, Any], key: str, lower: Mapping[str, str]) -> tuple[str, Any] | None:
    """``(the key as written, value)`` of ``key`` in a header (exact spelling first, then any case)."""
    real = key if key in header else lower.get(key.lower())
    return None if real is None else (real, header[real])


def number_and_unit(value: Any) -> tuple[float, str | None] | None:
    """``(number, unit or None)`` of a header value like ``"0.25"``, ``"250 mm"`` or ``1.5e-10``."""
    parts = str(value).strip().split()
    if not parts:
        return None
    try:
        number = float(parts[0])
    except ValueError:
        return None
    unit = parts[1].strip("[]()") if len(parts) > 1 else None
    return number, unit


def setup_from_edf_header(header: Mapping[str, Any]) -> Setup:
    """The setup in an EDF header: the ESRF keys (``SampleDistance``, ``WaveLength``, ``PSize_1``; metres), their
    variants (``Distance``, ``Wavelength``, ``Energy``, ``PixelSize``...; units by plausibility) and a Pilatus text
    header in ``title`` (see :data:`EDF_TEXT_KEYS`)."""
    lower = {str(k).lower(): str(k) for k in header}
    found: Found = {}
    for kind, keys in _EDF_KEYS.items():
        for key, unit in keys:
            item = _lookup(header, key, lower)
            parsed = None if item is None else number_and_unit(item[1])
            if item is not None and parsed is not None:
                add(found, kind, parsed[0], parsed[1] or unit, f"EDF {item[0]}")
    for key in EDF_TEXT_KEYS:
        item = _lookup(header, key, lower)
        if item is not None and "#" in str(item[1]):
            pilatus_values(str(item[1]), f"EDF {item[0]}", found)
    return setup_of(found)


_NEXUS_ENTRY = "/entry"
_NEXUS_VALUES: tuple[tuple[str, str, bool], ...] = (
    ("distance_m", "instrument/detector/distance", False),
    ("distance_m", "instrument/detector/detector_distance", False),
    ("wavelength_angstrom", "instrument/monochromator/wavelength", False),
    ("energy", "instrument/monochromator/energy", False),
    ("wavelength_angstrom", "instrument/beam/incident_wavelength", False),
    ("energy", "instrument/beam/incident_energy", False),
    ("pixel_size_m", "instrument/detector/x_pixel_size", False),
    ("pixel_size_m", "instrument/detector/y_pixel_size", False),
    ("energy", "instrument/source/energy", True),
)
"""``(setup value, path under an NXentry, units required)``: without a ``units`` attribute the unit is inferred
(see the module docstring), except for the source's energy, which may be the storage ring's (GeV)."""
_NEXUS_GROUP_VALUES = {"NXdetector": (("distance_m", "distance"), ("distance_m", "detector_distance"),
                                      ("pixel_size_m", "x_pixel_size"), ("pixel_size_m", "y_pixel_size")),
                       "NXmonochromator": (("wavelength_angstrom", "wavelength"), ("energy", "energy")),
                       "NXbeam": (("wavelength_angstrom", "incident_wavelength"), ("energy", "incident_energy"))}  # fmt: skip
"""Values read from any instrument group of these NX_class (other names than ``detector``, ``monochromator``)."""
_MAX_MEMBERS = 256
"""Members of a group looked through for NXentry / NX_class groups (the rest are not visited)."""
_MAX_VALUE_SIZE = 1 << 16
"""Largest dataset read for one setup value, elements (a per-frame distance array; the first is taken)."""


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_text(value.reshape(-1)[0])
    return str(value)


def _nexus_value(item: Any) -> tuple[float, str | None] | None:
    """``(first value, units attribute or None)`` of a numeric dataset (only its first element is read), else
    ``None``."""
    import h5py

    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "uif" or not 0 < item.size <= _MAX_VALUE_SIZE:
        return None
    value = float(np.asarray(item[(0,) * item.ndim] if item.ndim else item[()]).reshape(-1)[0])
    units = item.attrs.get("units")
    return value, (None if units is None else _attr_text(units).strip() or None)


def _children(group: Any) -> Iterable[tuple[str, Any]]:
    """At most :data:`_MAX_MEMBERS` ``(name, member)`` of a group (links are not followed twice: h5py resolves)."""
    for k, name in enumerate(group):
        if k >= _MAX_MEMBERS:
            return
        member = group.get(name)
        if member is not None:
            yield name, member


def _entries(handle: Any) -> list[tuple[str, Any]]:
    """``/entry`` first, then the root's other ``NX_class=NXentry`` groups."""
    import h5py

    found = []
    if isinstance(handle.get(_NEXUS_ENTRY), h5py.Group):
        found.append((_NEXUS_ENTRY, handle[_NEXUS_ENTRY]))
    for name, member in _children(handle):
        if isinstance(member, h5py.Group) and "/" + name != _NEXUS_ENTRY and \
                _attr_text(member.attrs.get("NX_class", "")) == "NXentry":  # fmt: skip
            found.append(("/" + name, member))
    return found


def setup_from_nexus(handle: Any) -> Setup:
    """The setup in a NeXus/Eiger file's instrument group (see :data:`_NEXUS_VALUES` and the module docstring)."""
    import h5py

    found: Found = {}
    for entry_path, entry in _entries(handle):
        for kind, path, needs_units in _NEXUS_VALUES:
            read = _nexus_value(entry.get(path))
            if read is not None and (read[1] is not None or not needs_units):
                add(found, kind, read[0], read[1], f"NeXus {entry_path}/{path}")
        instrument = entry.get("instrument")
        if not isinstance(instrument, h5py.Group):
            continue
        for name, group in _children(instrument):
            nx_class = _attr_text(group.attrs.get("NX_class", "")) if isinstance(group, h5py.Group) else ""
            for kind, field in _NEXUS_GROUP_VALUES.get(nx_class, ()):
                read = _nexus_value(group.get(field))
                if read is not None:
                    add(found, kind, read[0], read[1], f"NeXus {entry_path}/instrument/{name}/{field}")
    return setup_of(found)
