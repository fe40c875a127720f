"""Nickel EBSD pattern simulator and dataset writer (issue 5, seed 004 chapter 6).

Clean patterns come from the dynamical nickel master pattern shipped inside the kikuchipy wheel
(``kikuchipy.data.nickel_ebsd_master_pattern_small``, 20 kV, Lambert projection, both hemispheres:
no download) projected onto a 60x60 detector with ``EBSDMasterPattern.get_patterns``. Every pattern has
its own orientation (uniform on SO(3), so uniform over the m-3m fundamental zone) and its own
projection centre (PC). A degradation recipe then turns the clean pattern into camera counts:

* a static background (an off-centre Gaussian blob, as the backscatter yield falls off across the
  screen), a dynamic linear gradient and, sometimes, dark corners outside the round phosphor screen;
* a Kikuchi contrast of a few to tens of per cent on top of that background and a gamma change;
* blur (a point-spread function), Poisson shot noise at a dose in counts per pixel, Gaussian read
  noise and hot pixels;
* the camera's auto-gain to uint8.

Every random quantity is drawn from a seeded ``numpy.random.Generator``; each split gets its own
child of ``numpy.random.SeedSequence(seed)``. Splits are stored as uint8 ``.npz`` chunks with the
ground-truth unit quaternions (orix convention, ``(a, b, c, d)``) and the PCs.

Run: ``python -m training.ebsd.simulate --out DIR --n-train N --n-eval M --seed S``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from matserve.codecs.ebsd import NOMINAL_PC, PATTERN_SIDE_PX, PC_HALF_WIDTH, SAMPLE_TILT_DEG
from training.npz import write_npz

ENERGY_KV = 20
CHUNK_PATTERNS = 50_000
SIMULATION_BATCH = 5_000


@dataclass(frozen=True)
class Recipe:
    """Ranges of one degradation recipe. ``(lo, hi)`` pairs are uniform unless named log-uniform.

    ``clean_fraction`` of the patterns get no degradation at all (just the uint8 conversion).
    """

    clean_fraction: float
    pc_offset: tuple[float, float]  # |PC offset| per coordinate, random sign
    contrast: tuple[float, float]  # Kikuchi modulation relative to the background
    gamma: tuple[float, float]
    blur_probability: float
    blur_sigma_px: tuple[float, float]
    dose_counts: tuple[float, float]  # mean counts per pixel, log-uniform
    read_noise_counts: tuple[float, float]
    hot_pixel_probability: float
    hot_pixel_fraction: tuple[float, float]
    screen_edge_probability: float = 0.3  # dark corners outside the round phosphor screen


RECIPES: dict[str, Recipe] = {
    # Training: everything the model should be robust to, over the whole supported PC range.
    "train": Recipe(0.08, (0.0, PC_HALF_WIDTH), (0.04, 0.8), (0.7, 1.4), 0.5, (0.2, 1.2), (1.0, 1000.0), (0.0, 4.0), 0.3, (0.0, 0.003)),
    # Curriculum: the first part of training sees these (strong contrast and dose), so that learning starts.
    "easy": Recipe(0.5, (0.0, PC_HALF_WIDTH), (0.3, 0.8), (0.85, 1.2), 0.2, (0.2, 0.8), (50.0, 1000.0), (0.0, 2.0), 0.1, (0.0, 0.001)),
    # The held-out sets.
    "clean": Recipe(1.0, (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), 0.0, (0.0, 0.0), (1.0, 1.0), (0.0, 0.0), 0.0, (0.0, 0.0)),
    "noisy": Recipe(0.0, (0.0, 0.02), (0.2, 0.5), (0.85, 1.2), 0.3, (0.2, 0.8), (10.0, 60.0), (3.0, 3.0), 0.2, (0.0, 0.001)),
    "pc_shifted": Recipe(0.0, (0.02, PC_HALF_WIDTH), (0.2, 0.5), (0.85, 1.2), 0.3, (0.2, 0.8), (10.0, 60.0), (3.0, 3.0), 0.2, (0.0, 0.001)),
    "low_dose": Recipe(0.0, (0.0, 0.0), (0.2, 0.5), (0.85, 1.2), 0.3, (0.2, 0.8), (1.0, 5.0), (1.0, 1.0), 0.2, (0.0, 0.001)),
}  # fmt: skip

#: Split name -> recipe name; the order fixes which SeedSequence child each split gets.
SPLITS = {
    "train": "train",
    "val": "train",
    "test_clean": "clean",
    "test_noisy": "noisy",
    "test_pc_shifted": "pc_shifted",
    "test_low_dose": "low_dose",
    "train_easy": "easy",
}


@cache
def master_pattern():
    """The Ni master pattern shipped in the kikuchipy wheel (Lambert, both hemispheres, 20 kV)."""
    import kikuchipy as kp

    return kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random unit quaternions ``(n, 4)`` (Shoemake), ``a >= 0``."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack(
        [
            np.sqrt(1 - u1) * np.sin(2 * np.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * np.pi * u2),
            np.sqrt(u1) * np.sin(2 * np.pi * u3),
            np.sqrt(u1) * np.cos(2 * np.pi * u3),
        ],
        axis=1,
    )
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def random_pcs(n: int, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """PCs ``(n, 3)``: the nominal PC plus per-coordinate offsets of random sign."""
    lo, hi = recipe.pc_offset
    magnitude = rng.uniform(lo, hi, (n, 3))
    sign = rng.choice([-1.0, 1.0], (n, 3))
    return (np.asarray(NOMINAL_PC) + sign * magnitude).astype(np.float32)


def simulate_clean(quaternions: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    """Clean dynamical patterns ``(n, 60, 60)`` float32 in [-1, 1], one PC per pattern."""
    import kikuchipy as kp
    from orix.quaternion import Rotation

    detector = kp.detectors.EBSDDetector(
        shape=(PATTERN_SIDE_PX, PATTERN_SIDE_PX), pc=np.asarray(pcs, dtype=np.float64), sample_tilt=SAMPLE_TILT_DEG
    )
    simulated = master_pattern().get_patterns(
        Rotation(quaternions), detector, energy=ENERGY_KV, dtype_out=np.float32, compute=True, show_progressbar=False
    )
    return np.asarray(simulated.data, dtype=np.float32).reshape(-1, PATTERN_SIDE_PX, PATTERN_SIDE_PX)


def _gaussian_blur(images: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Blur each image with its own Gaussian sigma (pixels) by separable matrix products."""
    side = images.shape[-1]
    positions = np.arange(side, dtype=np.float32)
    distance = positions[:, None] - positions[None, :]
    sigma = np.maximum(sigma_px, 1e-3).astype(np.float32)[:, None, None]
    weights = np.exp(-0.5 * (distance[None] / sigma) ** 2)
    weights /= weights.sum(axis=2, keepdims=True)
    return np.matmul(np.matmul(weights, images), np.transpose(weights, (0, 2, 1)))


def degrade(clean: np.ndarray, recipe: Recipe, rng: np.random.Generator) -> np.ndarray:
    """Turn clean patterns in [-1, 1] into uint8 camera images following ``recipe``.

    Parameters
    ----------
    clean
        ``(n, h, w)`` float32 clean patterns from :func:`simulate_clean`.
    recipe
        The degradation ranges.
    rng
        The random generator (all draws come from it, in a fixed order).

    Returns
    -------
    numpy.ndarray
        ``(n, h, w)`` uint8.
    """
    n, rows, cols = clean.shape
    y, x = np.meshgrid(
        np.linspace(0, 1, rows, dtype=np.float32), np.linspace(0, 1, cols, dtype=np.float32), indexing="ij"
    )
    is_clean = rng.random(n) < recipe.clean_fraction
    center_x, center_y = rng.uniform(0.3, 0.7, n), rng.uniform(0.2, 0.6, n)
    width = rng.uniform(0.25, 0.7, n)
    floor = rng.uniform(0.1, 0.6, n)
    has_screen_edge = rng.random(n) < recipe.screen_edge_probability
    screen_radius, screen_dimming = rng.uniform(0.75, 0.95, n), rng.uniform(0.05, 0.4, n)
    gradient, angle = rng.uniform(-0.3, 0.3, n), rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(*recipe.contrast, n)
    gamma = rng.uniform(*recipe.gamma, n)
    blur_sigma = np.where(rng.random(n) < recipe.blur_probability, rng.uniform(*recipe.blur_sigma_px, n), 0.0)
    dose = np.exp(rng.uniform(*np.log(recipe.dose_counts), n))
    read_noise = rng.uniform(*recipe.read_noise_counts, n)
    hot_fraction = np.where(
        rng.random(n) < recipe.hot_pixel_probability, rng.uniform(*recipe.hot_pixel_fraction, n), 0.0
    )

    def per_pattern(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)[:, None, None]

    blob = np.exp(
        -((x[None] - per_pattern(center_x)) ** 2 + (y[None] - per_pattern(center_y)) ** 2)
        / (2 * per_pattern(width) ** 2)
    )
    ramp = per_pattern(gradient) * (
        np.cos(per_pattern(angle)) * (x[None] - 0.5) + np.sin(per_pattern(angle)) * (y[None] - 0.5)
    )
    background = np.clip(per_pattern(floor) + blob + ramp, 0.05, None)
    radius = np.hypot(x - 0.5, y - 0.5)[None] / per_pattern(screen_radius) * np.sqrt(2)
    edge = 1.0 / (1.0 + np.exp((radius - 1.0) * 40.0))
    background *= np.where(per_pattern(has_screen_edge) > 0, edge + (1 - edge) * per_pattern(screen_dimming), 1.0)
    kikuchi = clean - clean.mean(axis=(1, 2), keepdims=True)
    image = np.clip(background * (1.0 + per_pattern(contrast) * kikuchi), 1e-3, None) ** per_pattern(gamma)
    blurred = blur_sigma > 0
    if blurred.any():
        image[blurred] = _gaussian_blur(image[blurred], blur_sigma[blurred])
    counts = rng.poisson(image / image.mean(axis=(1, 2), keepdims=True) * per_pattern(dose)).astype(np.float32)
    counts += rng.normal(0.0, 1.0, counts.shape).astype(np.float32) * per_pattern(read_noise)
    hot = rng.random(counts.shape) < per_pattern(hot_fraction)
    counts[hot] = counts.max() * 4
    gain_reference = np.percentile(counts.reshape(n, -1), 99.5, axis=1)
    camera = counts * per_pattern(220.0 / np.maximum(gain_reference, 1e-6))
    camera[is_clean] = (clean[is_clean] + 1.0) * 127.5
    return np.clip(np.rint(camera), 0, 255).astype(np.uint8)


def simulate_split(n: int, recipe: Recipe, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Simulate ``n`` degraded patterns with their ground truth.

    Returns
    -------
    dict
        ``patterns`` uint8 ``(n, 60, 60)``, ``quaternions`` float64 ``(n, 4)`` (orix, sample -> crystal),
        ``pc`` float32 ``(n, 3)`` (Bruker convention).
    """
    quaternions = random_quaternions(n, rng)
    pcs = random_pcs(n, recipe, rng)
    patterns = np.empty((n, PATTERN_SIDE_PX, PATTERN_SIDE_PX), dtype=np.uint8)
    for start in range(0, n, SIMULATION_BATCH):
        stop = min(start + SIMULATION_BATCH, n)
        patterns[start:stop] = degrade(simulate_clean(quaternions[start:stop], pcs[start:stop]), recipe, rng)
    return {"patterns": patterns, "quaternions": quaternions, "pc": pcs}


def write_datasets(
    out: Path, n_train: int, n_eval: int, seed: int, splits: tuple[str, ...] | None = None, n_easy: int = 0
) -> dict:
    """Write every split (or only ``splits``) as uint8 ``.npz`` chunks of at most ``CHUNK_PATTERNS`` and
    ``manifest.json``. A split depends only on the seed, its size and its name, so re-writing one split
    alone reproduces it: exactly on the same machine, and to within a few grey levels on a few pixels per
    million on another CPU (numpy and numba pick other SIMD paths; the tests compare values, not hashes).

    Returns
    -------
    dict
        The manifest (files with sha256 and sizes, recipes, arguments).
    """
    out.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(len(SPLITS))
    manifest_path = out / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() and splits is not None else {}
    files: dict[str, dict] = dict(previous.get("files", {}))
    for (split, recipe_name), child in zip(SPLITS.items(), children, strict=True):
        if splits is not None and split not in splits:
            continue
        rng = np.random.default_rng(child)
        n = {"train": n_train, "train_easy": n_easy}.get(split, n_eval)
        if n == 0:
            continue
        started = time.perf_counter()
        for chunk_index, start in enumerate(range(0, n, CHUNK_PATTERNS)):
            arrays = simulate_split(min(CHUNK_PATTERNS, n - start), RECIPES[recipe_name], rng)
            name = f"{split}_{chunk_index:03d}.npz"
            files[name] = {
                "sha256": write_npz(out / name, arrays),
                "n_patterns": len(arrays["patterns"]),
                "split": split,
            }
        seconds = time.perf_counter() - started
        print(f"{split}: {n} patterns in {seconds:.0f} s ({n / seconds:.0f}/s)", file=sys.stderr)
    manifest = {
        "command": f"python -m training.ebsd.simulate --out {out} --n-train {n_train} --n-eval {n_eval} --seed {seed}"
        + (f" --n-easy {n_easy}" if n_easy else ""),
        "arguments": {"n_train": n_train, "n_eval": n_eval, "seed": seed, "n_easy": n_easy},
        "master_pattern": "kikuchipy.data.nickel_ebsd_master_pattern_small (Ni, 20 kV, Lambert, both hemispheres)",
        "detector": {
            "shape": [PATTERN_SIDE_PX, PATTERN_SIDE_PX],
            "nominal_pc": NOMINAL_PC,
            "sample_tilt_deg": SAMPLE_TILT_DEG,
        },
        "splits": SPLITS,
        "recipes": {name: asdict(recipe) for name, recipe in RECIPES.items()},
        "files": files,
    }
    if previous:  # the splits written now join those written before: record the one command that writes all
        arguments = {**previous["arguments"], **{k: v for k, v in manifest["arguments"].items() if k == "n_easy"}}
        manifest["arguments"] = arguments
        manifest["command"] = (
            f"python -m training.ebsd.simulate --out {out} --n-train {arguments['n_train']} "
            f"--n-eval {arguments['n_eval']} --seed {arguments['seed']} --n-easy {arguments.get('n_easy', 0)}"
        )
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_split(directory: Path, split: str) -> dict[str, np.ndarray]:
    """Concatenate the chunks of one split written by :func:`write_datasets`."""
    paths = sorted(directory.glob(f"{split}_[0-9][0-9][0-9].npz"))
    if not paths:
        raise FileNotFoundError(f"no {split}_NNN.npz chunks in {directory}")
    parts = [dict(np.load(path)) for path in paths]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=300_000)
    parser.add_argument("--n-eval", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-easy", type=int, default=60_000, help="curriculum patterns (the 'easy' recipe)")
    parser.add_argument("--splits", nargs="+", default=None, help="write only these splits (same bytes)")
    args = parser.parse_args(argv)
    write_datasets(args.out, args.n_train, args.n_eval, args.seed, tuple(args.splits) if args.splits else None,
                   args.n_easy)  # fmt: skip


if __name__ == "__main__":
    main()
