"""Crystal structures and reference peak tables for the XRD simulator (issue 4, seed 002).

(Over 500 lines because most of it is data: the phase tables of the known, novel and impostor types.)

Structures are built from space group + lattice + asymmetric unit with pymatgen's
``Structure.from_spacegroup`` (no CIF downloads). Building a structure costs 1-3 s and importing
pymatgen ~10 s, so each prototype is built once, its peaks are computed once with
``XRDCalculator(wavelength="CuKa")`` and the result is cached in ``reference_peaks.json`` next to
this file. The simulator only reads that cache (no pymatgen at simulation time).

Cache contents per structure type: for every reflection (a set of hkl that overlap for *any*
lattice parameters of the crystal system) the Miller indices of all its members, and per
prototype the "structure-factor intensity" ``|F|^2 * multiplicity``, i.e. pymatgen's intensity with
its Lorentz-polarisation factor at the reference angle divided out. The simulator puts the
reflection at the angle given by the sampled lattice and multiplies the reference ``|F|^2 * m``
by the Lorentz-polarisation factor at the new angle. Structure factors themselves are *not*
recomputed for a new lattice parameter (atomic form factors vary slowly with sin θ/λ: a few %
change over the lattice ranges used).

Regenerate the cache with ``python -m training.xrd.structures`` after editing the phase tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from matserve.codecs.xrd import CU_KA_ANGSTROM

#: Cu Kα wavelength in Å, as used by pymatgen's ``XRDCalculator(wavelength="CuKa")``
#: (weighted mean of Kα1 and Kα2; no separate Kα2 doublet is simulated).
CU_KA_WAVELENGTH_A = CU_KA_ANGSTROM  # defined once, by the serving codec (Kα1/Kα2 weighted mean)

#: 2θ range (degrees) over which reference peaks are computed: wider than the 20-90° grid so that
#: reflections moved into the window by a different lattice parameter are present.
REFERENCE_TWO_THETA_RANGE_DEG = (8.0, 140.0)

CACHE_PATH = Path(__file__).resolve().parent / "reference_peaks.json"


@dataclass(frozen=True)
class Prototype:
    """One real compound of a structure type.

    Attributes
    ----------
    name : str
        Compound name, e.g. ``"Cu"``.
    species : tuple of str
        Element of each site of the asymmetric unit.
    frac_coords : tuple of tuple of float
        Fractional coordinates of the asymmetric unit (default pymatgen setting of the space group).
    a_angstrom : float
        Room-temperature lattice parameter a in Å.
    c_angstrom : float
        Lattice parameter c in Å (equal to ``a_angstrom`` for cubic).
    """

    name: str
    species: tuple[str, ...]
    frac_coords: tuple[tuple[float, float, float], ...]
    a_angstrom: float
    c_angstrom: float


@dataclass(frozen=True)
class PhaseType:
    """A structure type: space group, crystal system, prototypes and sampled lattice ranges.

    Attributes
    ----------
    name : str
        Class name used in the datasets, e.g. ``"fcc_Fm-3m"``.
    space_group : str
        Hermann-Mauguin symbol accepted by pymatgen.
    crystal_system : str
        ``"cubic"``, ``"tetragonal"`` or ``"hexagonal"``: selects the d-spacing formula.
    prototypes : tuple of Prototype
        Real compounds; each pattern takes the peak intensities of one of them.
    a_range_angstrom : tuple of float
        Uniform range of the lattice parameter a in Å.
    c_over_a_range : tuple of float
        Uniform range of c/a (ignored for cubic).
    texture_directions : tuple of tuple of int
        Plane normals (hkl) that preferred orientation may be along.
    known : bool
        True for training classes, False for novel types that are never used in training.
    """

    name: str
    space_group: str
    crystal_system: str
    prototypes: tuple[Prototype, ...]
    a_range_angstrom: tuple[float, float]
    c_over_a_range: tuple[float, float]
    texture_directions: tuple[tuple[int, int, int], ...]
    known: bool


def _elements(
    names_and_lattice: list[tuple[str, float, float]], coords: tuple[tuple[float, float, float], ...]
) -> tuple[Prototype, ...]:
    """Monatomic prototypes sharing one asymmetric unit."""
    return tuple(Prototype(name, (name,), coords, a, c) for name, a, c in names_and_lattice)


_CUBIC_DIRECTIONS = ((1, 1, 1), (1, 0, 0), (1, 1, 0))
_HEX_DIRECTIONS = ((0, 0, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0))
_TET_DIRECTIONS = ((0, 0, 1), (1, 1, 0), (1, 0, 1), (1, 0, 0))

#: Known (training) structure types. Lattice parameters: room-temperature values
#: (Ni 3.524, Cu 3.615, Al 4.050 Å; Fe 2.866, Cr 2.910, Mo 3.147, W 3.165 Å;
#: Co 2.507/4.070, Ti 2.951/4.686, Mg 3.209/5.211, Zn 2.665/4.947 Å, c/a 1.59-1.86).
KNOWN_PHASES: tuple[PhaseType, ...] = (
    PhaseType(
        "fcc_Fm-3m",
        "Fm-3m",
        "cubic",
        _elements([("Ni", 3.524, 3.524), ("Cu", 3.615, 3.615), ("Al", 4.0495, 4.0495)], ((0.0, 0.0, 0.0),)),
        (3.48, 4.10),
        (1.0, 1.0),
        _CUBIC_DIRECTIONS,
        True,
    ),
    PhaseType(
        "bcc_Im-3m",
        "Im-3m",
        "cubic",
        _elements(
            [("Fe", 2.8665, 2.8665), ("Cr", 2.910, 2.910), ("Mo", 3.147, 3.147), ("W", 3.165, 3.165)],
            ((0.0, 0.0, 0.0),),
        ),
        (2.83, 3.20),
        (1.0, 1.0),
        _CUBIC_DIRECTIONS,
        True,
    ),
    PhaseType(
        "hcp_P6_3-mmc",
        "P6_3/mmc",
        "hexagonal",
        _elements(
            [("Co", 2.507, 4.070), ("Ti", 2.951, 4.686), ("Mg", 3.209, 5.211), ("Zn", 2.665, 4.947)],
            ((1 / 3, 2 / 3, 0.25),),
        ),
        (2.48, 3.24),
        (1.56, 1.87),
        _HEX_DIRECTIONS,
        True,
    ),
)

#: Novel structure types, never used in training: all differ from the known types in their
#: reflection sets (rutile: tetragonal; perovskite: primitive cubic with a multi-atom basis;
#: wurtzite: hexagonal without the hcp extinctions' intensity pattern; fluorite: fcc lattice but
#: a ≈ 5.4 Å and a strong (111) at 28°).
NOVEL_PHASES: tuple[PhaseType, ...] = (
    PhaseType(
        "rutile_P4_2-mnm",
        "P4_2/mnm",
        "tetragonal",
        (
            Prototype("TiO2", ("Ti", "O"), ((0.0, 0.0, 0.0), (0.3049, 0.3049, 0.0)), 4.594, 2.959),
            Prototype("SnO2", ("Sn", "O"), ((0.0, 0.0, 0.0), (0.3071, 0.3071, 0.0)), 4.737, 3.186),
        ),
        (4.50, 4.80),
        (0.62, 0.70),
        _TET_DIRECTIONS,
        False,
    ),
    PhaseType(
        "perovskite_Pm-3m",
        "Pm-3m",
        "cubic",
        (
            Prototype(
                "SrTiO3",
                ("Sr", "Ti", "O"),
                ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)),
                3.905,
                3.905,
            ),
            Prototype(
                "BaTiO3",
                ("Ba", "Ti", "O"),
                ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)),
                4.006,
                4.006,
            ),
        ),
        (3.85, 4.05),
        (1.0, 1.0),
        _CUBIC_DIRECTIONS,
        False,
    ),
    PhaseType(
        "wurtzite_P6_3mc",
        "P6_3mc",
        "hexagonal",
        (
            Prototype("ZnO", ("Zn", "O"), ((1 / 3, 2 / 3, 0.0), (1 / 3, 2 / 3, 0.382)), 3.250, 5.207),
            Prototype("GaN", ("Ga", "N"), ((1 / 3, 2 / 3, 0.0), (1 / 3, 2 / 3, 0.377)), 3.189, 5.185),
        ),
        (3.10, 3.30),
        (1.58, 1.64),
        _HEX_DIRECTIONS,
        False,
    ),
    PhaseType(
        "fluorite_Fm-3m",
        "Fm-3m",
        "cubic",
        (
            Prototype("CaF2", ("Ca", "F"), ((0.0, 0.0, 0.0), (0.25, 0.25, 0.25)), 5.463, 5.463),
            Prototype("CeO2", ("Ce", "O"), ((0.0, 0.0, 0.0), (0.25, 0.25, 0.25)), 5.411, 5.411),
        ),
        (5.35, 5.52),
        (1.0, 1.0),
        _CUBIC_DIRECTIONS,
        False,
    ),
)


def _cubic_impostor(
    name: str, space_group: str, prototypes: tuple[Prototype, ...], a_range: tuple[float, float]
) -> PhaseType:
    """A novel cubic structure type (impostor) with the cubic texture directions."""
    return PhaseType(name, space_group, "cubic", prototypes, a_range, (1.0, 1.0), _CUBIC_DIRECTIONS, False)


def _binary(names: list[tuple[str, str, str, float]], coords: tuple[tuple[float, float, float], ...]) -> tuple:
    """Cubic AB prototypes (name, A, B, a in Å) sharing one asymmetric unit."""
    return tuple(Prototype(name, (a_el, b_el), coords, a, a) for name, a_el, b_el, a in names)


_ORIGIN_AND_BODY_CENTRE = ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))

#: Novel "impostor" structure types (never used in training): each shares a known family's space
#: group, Bravais lattice or main peak positions. They are kept apart from ``NOVEL_PHASES`` (the four
#: types the served models were trained and evaluated against) and cached under the
#: ``impostor_phases`` key of ``reference_peaks.json``. Room-temperature lattice parameters (Å):
#: MgO 4.212, NiO 4.177, MnO 4.445, NaCl 5.640; GaAs 5.653, ZnS 5.409, InP 5.869; Si 5.431,
#: Ge 5.658 (origin choice 1 of Fd-3m, pymatgen's default: atom at 0,0,0); NiAl 2.887, FeAl 2.909,
#: CsCl 4.123; Cu3Au 3.749, Ni3Al 3.572; NiAs 3.619/5.034, FeS (NiAs-type subcell of troilite)
#: 3.446/5.877; Cr3Si 4.56, Nb3Sn 5.29.
IMPOSTOR_PHASES: tuple[PhaseType, ...] = (
    _cubic_impostor(
        "rocksalt_Fm-3m",
        "Fm-3m",
        _binary(
            [
                ("MgO", "Mg", "O", 4.212),
                ("NiO", "Ni", "O", 4.177),
                ("MnO", "Mn", "O", 4.445),
                ("NaCl", "Na", "Cl", 5.640),
            ],
            _ORIGIN_AND_BODY_CENTRE,
        ),
        (4.15, 5.70),
    ),
    _cubic_impostor(
        "zincblende_F-43m",
        "F-43m",
        _binary(
            [("GaAs", "Ga", "As", 5.653), ("ZnS", "Zn", "S", 5.409), ("InP", "In", "P", 5.869)],
            ((0.0, 0.0, 0.0), (0.25, 0.25, 0.25)),
        ),
        (5.38, 5.90),
    ),
    _cubic_impostor(
        "diamond_Fd-3m",
        "Fd-3m",
        _elements([("Si", 5.431, 5.431), ("Ge", 5.658, 5.658)], ((0.0, 0.0, 0.0),)),
        (5.40, 5.70),
    ),
    _cubic_impostor(
        "b2_Pm-3m",
        "Pm-3m",
        _binary(
            [("NiAl", "Ni", "Al", 2.887), ("FeAl", "Fe", "Al", 2.909), ("CsCl", "Cs", "Cl", 4.123)],
            _ORIGIN_AND_BODY_CENTRE,
        ),
        (2.85, 4.15),
    ),
    _cubic_impostor(
        "l12_Pm-3m",
        "Pm-3m",
        _binary([("Cu3Au", "Au", "Cu", 3.749), ("Ni3Al", "Al", "Ni", 3.572)], ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5))),
        (3.55, 3.77),
    ),
    PhaseType(
        "nias_P6_3-mmc",
        "P6_3/mmc",
        "hexagonal",
        (
            Prototype("NiAs", ("Ni", "As"), ((0.0, 0.0, 0.0), (1 / 3, 2 / 3, 0.25)), 3.619, 5.034),
            Prototype("FeS", ("Fe", "S"), ((0.0, 0.0, 0.0), (1 / 3, 2 / 3, 0.25)), 3.446, 5.877),
        ),
        (3.40, 3.65),
        (1.38, 1.72),
        _HEX_DIRECTIONS,
        False,
    ),
    _cubic_impostor(
        "a15_Pm-3n",
        "Pm-3n",
        (
            Prototype("Cr3Si", ("Si", "Cr"), ((0.0, 0.0, 0.0), (0.25, 0.0, 0.5)), 4.56, 4.56),
            Prototype("Nb3Sn", ("Sn", "Nb"), ((0.0, 0.0, 0.0), (0.25, 0.0, 0.5)), 5.29, 5.29),
        ),
        (4.50, 5.35),
    ),
)

#: Every novel type: the original four and the impostors.
ALL_NOVEL_PHASES: tuple[PhaseType, ...] = NOVEL_PHASES + IMPOSTOR_PHASES

ALL_PHASES: tuple[PhaseType, ...] = KNOWN_PHASES + NOVEL_PHASES + IMPOSTOR_PHASES


def metric_key(hkl: np.ndarray, crystal_system: str) -> np.ndarray:
    """Integer key that is equal for reflections overlapping at every lattice parameter.

    Parameters
    ----------
    hkl : numpy.ndarray
        int (..., 3) Miller indices (three-index, hexagonal i omitted).
    crystal_system : str
        ``"cubic"``, ``"tetragonal"`` or ``"hexagonal"``.

    Returns
    -------
    numpy.ndarray
        int64 (..., 2): (in-plane term, l²); for cubic (h²+k²+l², 0).
    """
    h, k, l = (np.asarray(hkl, dtype=np.int64)[..., i] for i in range(3))  # noqa: E741
    if crystal_system == "cubic":
        return np.stack([h * h + k * k + l * l, np.zeros_like(h)], axis=-1)
    if crystal_system == "tetragonal":
        return np.stack([h * h + k * k, l * l], axis=-1)
    if crystal_system == "hexagonal":
        return np.stack([h * h + h * k + k * k, l * l], axis=-1)
    raise ValueError(f"unsupported crystal system {crystal_system!r}")


def d_spacing_angstrom(
    hkl: np.ndarray, a_angstrom: np.ndarray, c_angstrom: np.ndarray, crystal_system: str
) -> np.ndarray:
    """Interplanar spacing from Miller indices and lattice parameters (broadcasting).

    Parameters
    ----------
    hkl : numpy.ndarray
        int (P, 3) Miller indices.
    a_angstrom, c_angstrom : numpy.ndarray
        Lattice parameters in Å, shape (N, 1) to get (N, P) out (``c`` unused for cubic).
    crystal_system : str
        ``"cubic"``, ``"tetragonal"`` or ``"hexagonal"``.

    Returns
    -------
    numpy.ndarray
        d-spacings in Å.
    """
    key = metric_key(hkl, crystal_system).astype(np.float64)
    if crystal_system == "cubic":
        inv_d2 = key[..., 0] / a_angstrom**2
    elif crystal_system == "tetragonal":
        inv_d2 = key[..., 0] / a_angstrom**2 + key[..., 1] / c_angstrom**2
    else:
        inv_d2 = 4.0 / 3.0 * key[..., 0] / a_angstrom**2 + key[..., 1] / c_angstrom**2
    return 1.0 / np.sqrt(inv_d2)


def lorentz_polarisation(two_theta_deg: np.ndarray) -> np.ndarray:
    """Lorentz-polarisation factor (1 + cos² 2θ) / (sin² θ cos θ), as in pymatgen's XRDCalculator."""
    theta = np.deg2rad(two_theta_deg) / 2.0
    return (1.0 + np.cos(2.0 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))


def build_structure(phase: PhaseType, prototype: Prototype):
    """Build the pymatgen ``Structure`` of a prototype from its space group (1-3 s per call)."""
    from pymatgen.core import Lattice, Structure

    if phase.crystal_system == "cubic":
        lattice = Lattice.cubic(prototype.a_angstrom)
    elif phase.crystal_system == "tetragonal":
        lattice = Lattice.tetragonal(prototype.a_angstrom, prototype.c_angstrom)
    else:
        lattice = Lattice.hexagonal(prototype.a_angstrom, prototype.c_angstrom)
    return Structure.from_spacegroup(
        phase.space_group, lattice, list(prototype.species), [list(c) for c in prototype.frac_coords]
    )


def pymatgen_peaks(phase: PhaseType, prototype: Prototype) -> list[tuple[float, float, tuple[int, int, int], int]]:
    """Peaks of one prototype from ``XRDCalculator(wavelength="CuKa")``.

    Returns
    -------
    list of tuple
        (2θ in degrees, intensity scaled to 100, representative hkl (three-index), multiplicity) per
        hkl family; families merged by pymatgen into one peak are listed separately.
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    pattern = XRDCalculator(wavelength="CuKa").get_pattern(
        build_structure(phase, prototype), scaled=True, two_theta_range=REFERENCE_TWO_THETA_RANGE_DEG
    )
    rows = []
    for two_theta, intensity, families in zip(pattern.x, pattern.y, pattern.hkls, strict=True):
        total_multiplicity = sum(f["multiplicity"] for f in families)
        for family in families:
            hkl = family["hkl"]
            hkl3 = (hkl[0], hkl[1], hkl[3]) if len(hkl) == 4 else tuple(hkl)
            # pymatgen does not report the split of a merged peak: share it by multiplicity.
            share = family["multiplicity"] / total_multiplicity
            rows.append((float(two_theta), float(intensity) * share, hkl3, int(family["multiplicity"])))
    return rows


def reflection_members(key: tuple[int, int], crystal_system: str, max_index: int = 12) -> list[list[int]]:
    """All integer hkl (three-index) with the given metric key: the reflection's equivalent planes.

    These are the planes whose normals March-Dollase preferred orientation is averaged over.
    """
    r = np.arange(-max_index, max_index + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    keys = metric_key(grid, crystal_system)
    members = grid[(keys[:, 0] == key[0]) & (keys[:, 1] == key[1])]
    return members.tolist()


def reference_table(phase: PhaseType) -> dict:
    """Reference peak table of a structure type (all prototypes on one reflection list).

    Returns
    -------
    dict
        ``hkl`` (P, 3) representative indices; ``members`` list of member hkl per reflection;
        ``structure_intensity`` (n_prototypes, P) ``|F|^2 * m`` normalised to a maximum of 1 per
        prototype (0 where a prototype has no such reflection above pymatgen's tolerance);
        ``reference_two_theta_deg`` (n_prototypes, P) pymatgen's angle (NaN where absent).
    """
    per_prototype = [pymatgen_peaks(phase, p) for p in phase.prototypes]
    keys: dict[tuple[int, int], tuple[int, int, int]] = {}
    for rows in per_prototype:
        for _, _, hkl, _ in rows:
            key = tuple(int(v) for v in metric_key(np.array(hkl), phase.crystal_system))
            keys.setdefault(key, hkl)
    ordered = sorted(
        keys,
        key=lambda k: -d_spacing_angstrom(np.array([keys[k]]), np.array(1.0), np.array(1.6), phase.crystal_system)[0],
    )
    index = {k: i for i, k in enumerate(ordered)}
    intensity = np.zeros((len(phase.prototypes), len(ordered)))
    two_theta = np.full((len(phase.prototypes), len(ordered)), np.nan)
    for j, rows in enumerate(per_prototype):
        for angle, scaled, hkl, _ in rows:
            i = index[tuple(int(v) for v in metric_key(np.array(hkl), phase.crystal_system))]
            intensity[j, i] += scaled / lorentz_polarisation(np.array(angle))
            two_theta[j, i] = angle
        intensity[j] /= intensity[j].max()
    return {
        "hkl": [list(keys[k]) for k in ordered],
        "members": [reflection_members(k, phase.crystal_system) for k in ordered],
        "structure_intensity": intensity.round(8).tolist(),
        "reference_two_theta_deg": [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in two_theta],
    }


def phase_definitions_sha256() -> str:
    """sha256 of the phase tables above: the cache records it so a stale cache is detected."""
    text = json.dumps([asdict(p) for p in ALL_PHASES], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_cache(path: Path = CACHE_PATH) -> dict:
    """Compute every reference table with pymatgen and write the JSON cache.

    Known and original novel types go under ``phases``, the impostor types under ``impostor_phases``.
    """
    cache = {
        "wavelength_angstrom": CU_KA_WAVELENGTH_A,
        "phase_definitions_sha256": phase_definitions_sha256(),
        "phases": {phase.name: reference_table(phase) for phase in KNOWN_PHASES + NOVEL_PHASES},
        "impostor_phases": {phase.name: reference_table(phase) for phase in IMPOSTOR_PHASES},
    }
    path.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    return cache


def load_cache(path: Path = CACHE_PATH) -> dict:
    """Read the reference peak cache, refusing a cache made from different phase tables."""
    cache = json.loads(path.read_text())
    if cache["phase_definitions_sha256"] != phase_definitions_sha256():
        raise RuntimeError(f"{path} is stale: run `python -m training.xrd.structures`")
    return cache


def phase_by_name(name: str) -> PhaseType:
    """Look up a structure type by its class name."""
    for phase in ALL_PHASES:
        if phase.name == name:
            return phase
    raise KeyError(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CACHE_PATH)
    args = parser.parse_args()
    cache = write_cache(args.out)
    for name, table in {**cache["phases"], **cache["impostor_phases"]}.items():
        print(f"{name}: {len(table['hkl'])} reflections")


if __name__ == "__main__":
    main()
