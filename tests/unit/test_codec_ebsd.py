"""EBSD codec: normalisation, resampling, decoders, refusals with their messages, geometry, orientation maths."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from matserve.codecs.ebsd import (
    NOMINAL_PC,
    PC_RANGE,
    EbsdInputError,
    EbsdTooLarge,
    Geometry,
    encode_batch,
    encode_patterns,
    normalize_patterns,
    resample_patterns,
)
from matserve.codecs.ebsd_uploads import decode_patterns
from matserve.codecs.orientation import (
    CUBIC_FZ_MAX_ANGLE_DEG,
    CUBIC_ROTATIONS,
    disorientation_deg,
    quaternion_multiply,
    quaternion_to_euler_bunge,
    reduce_to_fundamental_zone,
)


def bands(side: int = 60, seed: int = 0) -> np.ndarray:
    """A pattern-like image: a few bright straight bands on a dark background (float64, 0-255)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side] / side
    image = np.zeros((side, side))
    for _ in range(5):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3)
        distance = (cols - 0.5) * np.cos(angle) + (rows - 0.5) * np.sin(angle) - offset
        image += np.exp(-0.5 * (distance / 0.03) ** 2)
    return 40 + 150 * image / image.max()


def random_unit_quaternions(n: int, seed: int = 0) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


# -- normalisation and resampling (shared with training) --------------------------------------------------------


def test_normalised_patterns_have_zero_mean_and_unit_std() -> None:
    patterns = np.stack([bands(seed=s) * (s + 1) + 10 * s for s in range(4)]).astype(np.uint8)
    normalised = normalize_patterns(patterns)
    assert normalised.shape == (4, 60, 60) and normalised.dtype == np.float32
    np.testing.assert_allclose(normalised.reshape(4, -1).mean(axis=1), 0, atol=0.05)
    np.testing.assert_allclose(normalised.reshape(4, -1).std(axis=1), 1, atol=0.05)


def test_background_removal_makes_a_smooth_gradient_and_an_offset_irrelevant() -> None:
    pattern = bands()
    rows, cols = np.mgrid[0:60, 0:60]
    background = 80 + 2.0 * cols + 1.0 * rows + 30 * np.exp(-((rows - 30) ** 2 + (cols - 20) ** 2) / 800)
    clean, dirty = normalize_patterns(np.stack([pattern, 0.6 * pattern + background]))
    assert np.corrcoef(clean.ravel(), dirty.ravel())[0, 1] > 0.95  # edges (reflected) keep a little
    # Without the background removal the gradient dominates:
    raw = (0.6 * pattern + background).ravel()
    assert np.corrcoef(clean.ravel(), raw)[0, 1] < 0.8


def test_resampling_120_to_60_is_2x2_block_means() -> None:
    big = np.random.default_rng(1).random((3, 120, 120)).astype(np.float32) * 255
    expected = big.reshape(3, 60, 2, 60, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(resample_patterns(big), expected, rtol=1e-5, atol=1e-3)
    same = np.zeros((1, 60, 60), dtype=np.uint8)
    assert resample_patterns(same).dtype == np.float32 and resample_patterns(same).shape == (1, 60, 60)


def test_a_repeated_pattern_resamples_back_to_itself() -> None:
    pattern = bands().astype(np.float32)
    batch = encode_patterns([pattern, np.repeat(np.repeat(pattern, 2, 0), 2, 1)], np.tile(NOMINAL_PC, (2, 1)))
    assert batch.rows == [0, 1]
    np.testing.assert_allclose(batch.resampled[1], pattern, atol=1e-3)
    np.testing.assert_allclose(batch.patterns[0], batch.patterns[1], atol=1e-4)


# -- refusals -----------------------------------------------------------------------------------------------------


def test_bad_patterns_get_per_item_errors_and_the_others_go_on() -> None:
    good = bands().astype(np.uint8)
    nan = bands()
    nan[3, 4] = np.nan
    patterns = [good, np.zeros((60, 60), np.uint8), nan, np.full((60, 60), 7.0), good[:, :50], good[:40, :40],
                np.zeros((1100, 1100), np.uint8), np.zeros((60, 60), complex), good]  # fmt: skip
    batch = encode_patterns(patterns, np.tile(NOMINAL_PC, (len(patterns), 1)))
    errors = [r["error"] for r in batch.results]
    assert batch.rows == [0, 8] and errors[0] is None and errors[8] is None
    assert errors[1].startswith("constant pattern (every pixel is 0)")
    assert "NaN" in errors[2]
    assert "every pixel is 7" in errors[3]
    assert "60x50 px (rows x cols), not square" in errors[4] and "resampled" in errors[4]
    assert "40x40 px" in errors[5] and "from 60x60 to 1024x1024" in errors[5]
    assert "1100x1100" in errors[6]
    assert "dtype complex" in errors[7]
    assert batch.results[1]["pc"] is None and batch.results[0]["pc"] == list(NOMINAL_PC)


def test_job_items_are_checked_one_by_one() -> None:
    good = bands().astype(int).tolist()
    items = [{"pattern": good}, {"pattern": good, "pc": [0.9, 0.2, 0.5]}, {"pattern": [[1, 2], [3]]}, "x",
             {"pattern": good, "pc": [0.43, 0.22, 0.49]}]  # fmt: skip
    batch = encode_batch(items)
    errors = [r["error"] for r in batch.results]
    assert batch.rows == [0, 4]
    assert "outside the range the model supports" in errors[1]
    assert "different lengths" in errors[2]
    assert '"pattern"' in errors[3]
    assert batch.pc[1].tolist() == pytest.approx([0.43, 0.22, 0.49])


# -- decoders -----------------------------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_8_bit_16_bit_and_rgb() -> None:
    grey = bands().astype(np.uint8)
    (decoded,) = decode_patterns(png(grey))
    np.testing.assert_array_equal(decoded[0], grey)
    deep = (bands() * 200).astype(np.uint16)
    (decoded,) = decode_patterns(png(deep))
    np.testing.assert_array_equal(decoded[0], deep)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    (decoded,) = decode_patterns(png(rgb))
    np.testing.assert_allclose(decoded[0], grey, atol=0.01)


def test_multi_page_tiff_gives_one_pattern_per_page() -> None:
    import tifffile

    pages = np.stack([(bands(seed=s) * 100).astype(np.uint16) for s in range(3)])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pages, photometric="minisblack")  # three pages
    stacks = decode_patterns(buffer.getvalue(), "image/tiff")
    assert len(stacks) == 3
    np.testing.assert_array_equal(np.concatenate(stacks), pages)


@pytest.mark.parametrize(("shape", "count"), [((60, 60), 1), ((5, 60, 60), 5), ((2, 3, 90, 90), 6)])
def test_npy_of_two_three_and_four_dimensions(shape: tuple[int, ...], count: int) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ones(shape, np.float32))
    (stack,) = decode_patterns(buffer.getvalue())
    assert stack.shape == (count, *shape[-2:])


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"hello world", EbsdInputError, "not a PNG, TIFF or NPY file (it starts with b'hello world'); accepted: PNG"),
        (b"", EbsdInputError, "the body is empty"),
        (b"\x89PNG\r\n\x1a\nbroken", EbsdInputError, "cannot be decoded as PNG"),
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 64, EbsdInputError, "POST /v1/ebsd/scan"),
    ],
)
def test_unreadable_bytes_are_refused_naming_the_accepted_formats(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_patterns(data)


def test_npy_with_wrong_dimensions_dtype_or_size_is_refused() -> None:
    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    with pytest.raises(EbsdInputError, match="5 dimensions"):
        decode_patterns(npy(np.zeros((1, 1, 1, 60, 60))))
    with pytest.raises(EbsdInputError, match="dtype <U1"):
        decode_patterns(npy(np.array([["a"]])))
    with pytest.raises(EbsdTooLarge, match="2000x2000 px, over the limit of 1024x1024"):
        decode_patterns(npy(np.zeros((2000, 2000), np.uint8)))


# -- geometry -----------------------------------------------------------------------------------------------------


def test_projection_centres_default_broadcast_and_range() -> None:
    geometry = Geometry()
    np.testing.assert_allclose(geometry.projection_centres(None, 2), [NOMINAL_PC] * 2, atol=1e-7)
    np.testing.assert_allclose(geometry.projection_centres([0.42, 0.21, 0.5], 3)[2], [0.42, 0.21, 0.5], atol=1e-7)
    edge = [r[1] for r in PC_RANGE]
    geometry.projection_centres(edge, 1)  # the range's ends are accepted
    with pytest.raises(
        EbsdInputError,
        match=r"outside the range the model supports: PCx 0\.375-0\.475, PCy 0\.163-0\.263, PCz 0\.451-0\.551",
    ):
        geometry.projection_centres([0.5, 0.5, 0.5], 1)
    with pytest.raises(EbsdInputError, match=r"pattern 1; 1 of 2 outside"):
        geometry.projection_centres([NOMINAL_PC, [0.425, 0.3, 0.5]], 2)
    with pytest.raises(EbsdInputError, match=r"shape \[2, 3\]"):
        geometry.projection_centres([NOMINAL_PC, NOMINAL_PC], 3)


def test_tilts_other_than_the_trained_geometry_are_refused() -> None:
    geometry = Geometry.from_card({"geometry": {"sample_tilt_deg": 70.0, "detector_tilt_deg": 0.0}})
    geometry.check_tilts(70.3, -0.4)
    geometry.check_tilts(None, None)
    with pytest.raises(EbsdInputError, match="trained for a sample tilt of 70 deg and a detector tilt of 0 deg"):
        geometry.check_tilts(60.0, None)
    with pytest.raises(EbsdInputError, match="detector_tilt_deg 10"):
        geometry.check_tilts(None, 10.0)


# -- orientations: against orix -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orix_quaternion() -> SimpleNamespace:
    """orix's Orientation, Rotation and symmetry (orix is imported by these tests only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from orix.quaternion import Orientation, Rotation, symmetry

    return SimpleNamespace(Orientation=Orientation, Rotation=Rotation, symmetry=symmetry)


def test_the_symmetry_group_is_orix_432(orix_quaternion: SimpleNamespace) -> None:
    ours = {tuple(np.round(q, 6)) for q in CUBIC_ROTATIONS}
    theirs = {tuple(np.round(q if q[np.flatnonzero(np.abs(q) > 1e-9)[0]] > 0 else -q, 6))
              for q in orix_quaternion.symmetry.O.data}  # fmt: skip
    assert ours == theirs and len(ours) == 24


def test_fundamental_zone_reduction_matches_orix(orix_quaternion: SimpleNamespace) -> None:
    q = random_unit_quaternions(3000, seed=2)
    ours = reduce_to_fundamental_zone(q)
    theirs = orix_quaternion.Orientation(q, symmetry=orix_quaternion.symmetry.Oh).reduce().data
    same_sign = np.where((ours * theirs).sum(axis=1, keepdims=True) < 0, -theirs, theirs)
    np.testing.assert_allclose(ours, same_sign, atol=1e-9)
    assert (ours[:, 0] >= 0).all()
    angles = np.degrees(2 * np.arccos(np.clip(ours[:, 0], -1, 1)))
    assert angles.max() <= CUBIC_FZ_MAX_ANGLE_DEG


def test_euler_angles_match_orix_including_degenerate_cases(orix_quaternion: SimpleNamespace) -> None:
    special = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [np.cos(0.3), 0, 0, np.sin(0.3)], [0, np.cos(0.2), np.sin(0.2), 0]])
    q = np.concatenate([random_unit_quaternions(1000, seed=3), special])
    ours = quaternion_to_euler_bunge(q)
    theirs = orix_quaternion.Rotation(q).to_euler()
    difference = np.angle(np.exp(1j * (ours - theirs)))  # modulo 2 pi
    assert np.abs(difference).max() < 1e-9
    assert (ours >= 0).all() and (ours[:, [0, 2]] < 2 * np.pi).all() and (ours[:, 1] <= np.pi).all()
    back = orix_quaternion.Rotation.from_euler(ours[:1000]).data  # round trip (orix's Phi = 180 deg case is its own)
    np.testing.assert_allclose(np.abs((back * q[:1000]).sum(axis=1)), 1, atol=1e-9)


def test_disorientation_is_zero_for_symmetry_equivalents_and_matches_orix(orix_quaternion: SimpleNamespace) -> None:
    q = random_unit_quaternions(200, seed=4)
    equivalent = quaternion_multiply(CUBIC_ROTATIONS[np.arange(200) % 24], q)  # s * q: the same orientation
    assert disorientation_deg(q, equivalent).max() < 1e-4
    assert disorientation_deg(q, -q).max() < 1e-4
    other = random_unit_quaternions(200, seed=5)
    oh = orix_quaternion.symmetry.Oh
    expected = orix_quaternion.Orientation(q, symmetry=oh).angle_with(orix_quaternion.Orientation(other, symmetry=oh),
                                                                      degrees=True)  # fmt: skip
    np.testing.assert_allclose(disorientation_deg(q, other), expected, atol=1e-6)
    assert disorientation_deg(q, other).max() <= 62.81
