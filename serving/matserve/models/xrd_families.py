"""The known structure families as the XRD physics fit sees them (issue 21): reflections, ``|F|² m`` per prototype,
March-Dollase tables, lattice windows, read from a version's ``physics_reference.json``.

Units: 2θ in degrees (Cu Kα 1.54184 Å), lattice parameters in Å; texture r is March-Dollase's (1 = random).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from matserve.codecs.xrd import CU_KA_ANGSTROM

TEXTURE_R = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8)
REFERENCE_FILE = "physics_reference.json"


@dataclass(frozen=True)
class Family:
    """One known structure family, as the fit sees it.

    Attributes
    ----------
    label, space_group : str
        Class label and Hermann-Mauguin symbol.
    hexagonal : bool
        Hexagonal metric (else cubic).
    metric_a, metric_c : numpy.ndarray
        (R,) 1/d² = metric_a / a² + metric_c / c² per reflection (cubic: h²+k²+l² and 0).
    structure_intensity : numpy.ndarray
        (n_prototypes, R) ``|F|² m`` of each prototype, max 1.
    texture : numpy.ndarray
        (n_c_over_a, T, R) March-Dollase factor per texture option (direction × r) and reflection, tabulated at
        :attr:`texture_c_over_a` (one row for cubic).
    texture_c_over_a : numpy.ndarray
        (n_c_over_a,) c/a of the texture table rows.
    a_range_angstrom, c_over_a_range : tuple of float
        The lattice window searched.
    """

    label: str
    space_group: str
    hexagonal: bool
    metric_a: np.ndarray
    metric_c: np.ndarray
    structure_intensity: np.ndarray
    texture: np.ndarray
    texture_c_over_a: np.ndarray
    a_range_angstrom: tuple[float, float]
    c_over_a_range: tuple[float, float]


def _reciprocal(hkl: np.ndarray, c_over_a: float, hexagonal: bool) -> np.ndarray:
    """Cartesian reciprocal vectors (a = 1) of hkl (M, 3)."""
    h, k, l = (hkl[:, i].astype(np.float64) for i in range(3))  # noqa: E741
    if hexagonal:
        return np.stack([h, (h + 2.0 * k) / np.sqrt(3.0), l / c_over_a], axis=-1)
    return np.stack([h, k, l], axis=-1)


def _march_dollase_table(
    members: list[np.ndarray], directions: np.ndarray, c_over_a: float, hexagonal: bool
) -> np.ndarray:
    """(T, R) March-Dollase factors, mean over each reflection's planes, for every direction × r of the grid."""
    rows = []
    for direction in directions:
        pref = _reciprocal(direction[None, :], c_over_a, hexagonal)[0]
        pref = pref / np.linalg.norm(pref)
        for r in TEXTURE_R:
            row = []
            for planes in members:
                g = _reciprocal(planes, c_over_a, hexagonal)
                cos2 = np.clip((g @ pref / np.linalg.norm(g, axis=1)) ** 2, 0.0, 1.0)
                row.append(float(np.mean((r**2 * cos2 + (1.0 - cos2) / r) ** -1.5)))
            rows.append(row)
    return np.asarray(rows)


def family_from_json(entry: dict[str, Any]) -> Family:
    """A :class:`Family` from one entry of ``physics_reference.json`` (see :func:`reference_entry`)."""
    hkl = np.asarray(entry["hkl"], dtype=np.int64)
    hexagonal = entry["crystal_system"] == "hexagonal"
    members = [np.asarray(m, dtype=np.int64) for m in entry["members"]]
    directions = np.asarray(entry["texture_directions"], dtype=np.int64)
    c_over_a_range = tuple(entry["c_over_a_range"])
    grid = np.arange(c_over_a_range[0], c_over_a_range[1] + 0.05, 0.05) if hexagonal else np.array([1.0])
    texture = np.stack([_march_dollase_table(members, directions, float(q), hexagonal) for q in grid])
    if hexagonal:
        metric_a = 4.0 / 3.0 * (hkl[:, 0] ** 2 + hkl[:, 0] * hkl[:, 1] + hkl[:, 1] ** 2)
        metric_c = hkl[:, 2].astype(np.float64) ** 2
    else:
        metric_a = (hkl**2).sum(axis=1).astype(np.float64)
        metric_c = np.zeros(len(hkl))
    return Family(
        label=entry["label"],
        space_group=entry["space_group"],
        hexagonal=hexagonal,
        metric_a=metric_a.astype(np.float64),
        metric_c=metric_c,
        structure_intensity=np.asarray(entry["structure_intensity"], dtype=np.float64),
        texture=texture,
        texture_c_over_a=grid,
        a_range_angstrom=tuple(entry["a_range_angstrom"]),  # type: ignore[arg-type]
        c_over_a_range=c_over_a_range,  # type: ignore[arg-type]
    )


@cache
def _families_from_file(path: str, sha256: str) -> tuple[Family, ...]:
    del sha256  # part of the cache key only: a changed file is read again
    document = json.loads(Path(path).read_text())
    return tuple(family_from_json(entry) for entry in document["families"])


def load_families(path: Path, sha256: str) -> tuple[Family, ...]:
    """The families of a version's ``physics_reference.json`` (read once per file content)."""
    return _families_from_file(str(path), sha256)


def two_theta_deg(family: Family, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """2θ (degrees, Cu Kα) of every reflection for lattices a, c (...,) -> (..., R); NaN beyond 180°."""
    q = family.metric_a / a[..., None] ** 2 + family.metric_c / c[..., None] ** 2
    sin_theta = CU_KA_ANGSTROM * np.sqrt(q) / 2.0
    with np.errstate(invalid="ignore"):
        return np.degrees(2.0 * np.arcsin(np.where(sin_theta < 1.0, sin_theta, np.nan)))


def reference_entry(
    label: str,
    space_group: str,
    crystal_system: str,
    reference: dict[str, Any],
    texture_directions: list[list[int]],
    a_range_angstrom: tuple[float, float],
    c_over_a_range: tuple[float, float],
) -> dict[str, Any]:
    """One family of ``physics_reference.json`` from the simulator's reference peak cache entry (training writes it)."""
    return {
        "label": label,
        "space_group": space_group,
        "crystal_system": crystal_system,
        "hkl": reference["hkl"],
        "members": reference["members"],
        "structure_intensity": reference["structure_intensity"],
        "texture_directions": texture_directions,
        "a_range_angstrom": list(a_range_angstrom),
        "c_over_a_range": list(c_over_a_range),
    }
