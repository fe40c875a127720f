"""The XRD endpoints end to end through the served API (real server, committed models), raw HTTP and the SDK."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from matserve.codecs.xrd import CU_KA_ANGSTROM, MODEL_GRID_DEG
from matserve_client import AsyncClient, Client, InvalidInputError
from training.xrd import simulate as sim
from training.xrd.structures import KNOWN_PHASES, NOVEL_PHASES

KNOWN = [p.name for p in KNOWN_PHASES]
MO_KA_ANGSTROM = 0.71073


def post(url: str, path: str, body: object) -> httpx.Response:
    return httpx.post(url + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"},
                      timeout=120)  # fmt: skip


def known_patterns(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = sim.single_phase_set(KNOWN, n_per_class, np.random.default_rng(seed), "float32")
    return arrays["x"], arrays["y"]


def item(intensity: np.ndarray, two_theta_deg: np.ndarray = MODEL_GRID_DEG, **extra: float) -> dict:
    return {"two_theta_deg": np.asarray(two_theta_deg).tolist(), "intensity": (1000 * intensity).tolist(), **extra}


def write_pattern_files(folder: Path, name: str, patterns: np.ndarray, header: str, separator: str) -> list[Path]:
    """Two-column text files (2θ on the model grid, intensity × 1000), one per pattern, named ``name.format(i)``."""
    paths = []
    for i, pattern in enumerate(patterns):
        rows = (f"{t:.5f}{separator}{1000 * v:.3f}" for t, v in zip(MODEL_GRID_DEG, pattern, strict=True))
        paths.append(folder / name.format(i))
        paths[-1].write_text(header + "\n" + "\n".join(rows))
    return paths


def good_item() -> dict:
    x, _ = known_patterns(1, 5)
    return item(x[0])


def test_phase_classifies_known_phases_and_names_the_version(server_url: str) -> None:
    x, y = known_patterns(10, 123)
    response = post(server_url, "/v1/xrd/phase", {"patterns": [item(p) for p in x]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "xrd_phase" and body["version"]
    predicted = [KNOWN.index(r["phase"]) for r in body["results"]]
    assert np.mean(np.array(predicted) == y) >= 0.95
    first = body["results"][0]
    known_mass = 1 - (first.get("probability_unknown") or 0.0)  # 1.1.0 scales them by 1 - probability_unknown
    assert set(first["probabilities"]) == set(KNOWN) and abs(sum(first["probabilities"].values()) - known_mass) < 1e-4
    assert first["space_group"] in ("Fm-3m", "Im-3m", "P6_3/mmc") and first["coverage"] > 0.99


def test_other_grids_and_wavelengths_are_resampled_to_the_same_answer(server_url: str) -> None:
    """A pattern measured on a finer grid over 10-100°, and the same pattern as Mo Kα would record it."""
    rng = np.random.default_rng(9)
    fine = np.arange(10.0, 100.0, 0.01)
    patterns, expected = [], []
    for label, name in enumerate(KNOWN):
        phase = sim.sample_phase_params(KNOWN_PHASES[label], 2, rng)
        measurement = sim.ideal_measurement_params(2)
        patterns.extend(sim.phase_signal(name, phase, measurement, fine))
        expected += [name, name]
    mo_two_theta = 2 * np.degrees(np.arcsin(np.sin(np.radians(fine) / 2) * MO_KA_ANGSTROM / CU_KA_ANGSTROM))
    cu = post(server_url, "/v1/xrd/phase", {"patterns": [item(p, fine) for p in patterns]}).json()["results"]
    mo = post(server_url, "/v1/xrd/phase",
              {"patterns": [item(p, mo_two_theta) for p in patterns], "wavelength_angstrom": MO_KA_ANGSTROM})  # fmt: skip
    assert mo.status_code == 200, mo.text
    assert [r["phase"] for r in cu] == expected
    assert [r["phase"] for r in mo.json()["results"]] == expected
    for a, b in zip(cu, mo.json()["results"], strict=True):
        assert abs(a["probability"] - b["probability"]) < 0.02
    one = post(server_url, "/v1/xrd/phase", {"pattern": item(patterns[0], fine)})
    assert one.status_code == 200 and len(one.json()["results"]) == 1


def test_novelty_flags_an_unknown_phase_and_not_a_known_one(server_url: str) -> None:
    x, _ = known_patterns(6, 321)
    # Wurtzite is left out here: its peaks sit where hcp's do, and the card reports it flagged only 2 % of the
    # time (AUROC 0.94); the other three novel types are flagged > 97 % of the time.
    types = [p.name for p in NOVEL_PHASES if not p.name.startswith("wurtzite")]
    novel = sim.single_phase_set(types, 4, np.random.default_rng(4), "float32")["x"]
    response = post(server_url, "/v1/xrd/novelty", {"patterns": [item(p) for p in np.concatenate([x, novel])]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    known_flags = [r["is_novel"] for r in results[: len(x)]]
    novel_flags = [r["is_novel"] for r in results[len(x) :]]
    assert sum(known_flags) <= 2 and sum(novel_flags) >= len(novel_flags) - 2
    for r in results:
        assert (
            0 <= r["novelty_percentile"] <= 100
            and len(r["latent"]) >= 2
            and len(r["latent_map"]) == 2
            and r["threshold_percentile"] > 50
        )
        assert r["nearest_known_phase"] in KNOWN and 0 < r["nearest_known_phase_share"] <= 1
        assert r["is_novel"] == (r["novelty_percentile"] > r["threshold_percentile"]) or abs(
            r["novelty_percentile"] - r["threshold_percentile"]) < 0.5  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    return struct.unpack(">II", data[16:24])


def test_novelty_plots_on_request(server_url: str) -> None:
    import base64

    response = post(server_url, "/v1/xrd/novelty", {"pattern": good_item(), "plots": True})
    assert response.status_code == 200, response.text
    plots = response.json()["results"][0]["plots"]
    width, height = png_size(base64.b64decode(plots["reconstruction_png"]))
    assert width >= 400 and height >= 300
    assert png_size(base64.b64decode(plots["latent_map_png"]))[0] >= 400
    too_many = post(server_url, "/v1/xrd/novelty", {"patterns": [good_item()] * 17, "plots": True})
    assert too_many.status_code == 422 and "at most 16 patterns" in too_many.json()["error"]["message"]
    without = post(server_url, "/v1/xrd/novelty", {"pattern": good_item()}).json()["results"][0]
    assert without.get("plots") is None


def _bad_cases() -> list[tuple[str, object, int, str]]:
    grid = MODEL_GRID_DEG.tolist()
    ones = [1.0] * 2048
    spiky = np.abs(np.sin(MODEL_GRID_DEG)).tolist()
    return [
        ("short range", {"pattern": {"two_theta_deg": np.linspace(20, 40, 500).tolist(), "intensity": spiky[:500]}},
         422, "a span of at least 35°"),
        ("lengths", {"pattern": {"two_theta_deg": grid, "intensity": ones[:-1]}}, 422, "they must match"),
        ("not increasing", {"pattern": {"two_theta_deg": grid[::-1], "intensity": spiky}}, 422, "strictly increasing"),
        ("nan", {"pattern": {"two_theta_deg": grid, "intensity": [float("nan"), *spiky[1:]]}}, 422, "NaN"),
        ("negative", {"pattern": {"two_theta_deg": grid, "intensity": [-5.0, *spiky[1:]]}}, 422, "non-negative"),
        ("few points", {"pattern": {"two_theta_deg": [20.0, 50.0, 90.0], "intensity": [1.0, 2.0, 1.0]}}, 422,
         "too few"),
        ("constant", {"pattern": {"two_theta_deg": grid, "intensity": ones}}, 422, "constant"),
        ("wavelength", {"pattern": {"two_theta_deg": grid, "intensity": spiky}, "wavelength_angstrom": 9.0}, 422,
         "wavelength_angstrom"),
        ("both", {"pattern": {"two_theta_deg": grid, "intensity": spiky},
                  "patterns": [{"two_theta_deg": grid, "intensity": spiky}]}, 422, "not both"),
        ("neither", {}, 422, "either 'pattern'"),
        ("strings", {"pattern": {"two_theta_deg": grid, "intensity": ["a"] * 2048}}, 422, "intensity"),
        ("unknown field", {"pattern": {"two_theta_deg": grid, "intensity": spiky, "counts": 1}}, 422, "counts"),
        ("too many points", {"pattern": {"two_theta_deg": list(range(100_001)), "intensity": [1.0] * 100_001}},
         413, "at most 100000 per pattern"),
        ("too many patterns", {"patterns": [{"two_theta_deg": [20.0], "intensity": [1.0]}] * 1025}, 413,
         "at most 1024"),
        ("unknown version", {"pattern": {"two_theta_deg": grid, "intensity": spiky}, "version": "9.9.9"}, 404,
         "9.9.9"),
    ]  # fmt: skip


@pytest.mark.parametrize("path", ["/v1/xrd/phase", "/v1/xrd/novelty"])
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server_url: str, path: str) -> None:
    for name, body, status, fragment in _bad_cases():
        response = post(server_url, path, body)
        assert response.status_code == status, (name, response.text)
        assert fragment in response.json()["error"]["message"], (name, response.text)
    ok = post(server_url, path, {"pattern": good_item()})
    assert ok.status_code == 200, ok.text


def test_a_batch_names_every_failing_pattern(server_url: str) -> None:
    good = good_item()
    bad_length = {"two_theta_deg": good["two_theta_deg"], "intensity": good["intensity"][:-3]}
    negative = {"two_theta_deg": good["two_theta_deg"], "intensity": [-1.0, *good["intensity"][1:]]}
    response = post(server_url, "/v1/xrd/phase", {"patterns": [good, bad_length, good, negative]})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message.startswith("2 of 4 pattern(s) cannot be used")
    assert "patterns[1]: two_theta_deg has 2048 points but intensity has 2045" in message
    assert "patterns[3]: intensity must be non-negative" in message and "patterns[0]" not in message


def test_body_over_the_xrd_limit_is_refused(server_url: str) -> None:
    big = b'{"patterns": [' + b"1" * (65 * 1024 * 1024) + b"]}"
    response = httpx.post(server_url + "/v1/xrd/phase", content=big, headers={"content-type": "application/json"},
                          timeout=120)  # fmt: skip
    assert response.status_code == 413 and "bytes" in response.json()["error"]["message"]


def test_xrd_batch_job_reports_per_item_errors(server_url: str) -> None:
    good = good_item()
    bad = {"two_theta_deg": [20.0, 30.0], "intensity": [1.0, 2.0]}
    job = post(server_url, "/v1/jobs", {"model": "xrd_phase", "inputs": [good, bad, good]})
    assert job.status_code == 202, job.text
    status_url = server_url + job.json()["status_url"]
    deadline = time.monotonic() + 60
    while httpx.get(status_url).json()["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    results = httpx.get(status_url + "/results").json()["results"]
    assert results[0]["phase"] and results[2]["phase"] == results[0]["phase"]
    assert results[1]["phase"] is None and "too few" in results[1]["error"]
    wrong = post(server_url, "/v1/jobs", {"model": "xrd_phase", "inputs": [{"intensity": [1.0]}]})
    assert wrong.status_code == 422 and "two_theta_deg" in wrong.json()["error"]["message"]


def test_sdk_reads_files_chunks_and_keeps_order(server_url: str, tmp_path: Path) -> None:
    x, y = known_patterns(2, 77)
    paths = write_pattern_files(tmp_path, "scan_{}.xy", x, header="# 2theta intensity", separator=" ")
    with Client(server_url, chunk_size=4) as client:
        from_files = client.classify_xrd(paths)
        from_pairs = client.classify_xrd([(MODEL_GRID_DEG, 1000 * p) for p in x])
        single = client.classify_xrd(str(paths[0]))
        assert [r.source for r in from_files] == [str(p) for p in paths] and single[0].source == str(paths[0])
        assert [r.phase for r in from_files] == [r.phase for r in from_pairs] == [KNOWN[i] for i in y]
        assert len({r.version for r in from_files}) == 1
        with pytest.raises(InvalidInputError) as failure:
            client.classify_xrd([(MODEL_GRID_DEG, p) for p in x] + [([20.0, 21.0], [1.0, 2.0])])
        assert "your pattern 4" in failure.value.message and "patterns[2]" in failure.value.message


async def test_async_sdk_novelty_with_plots(server_url: str, tmp_path: Path) -> None:
    x, _ = known_patterns(1, 8)
    async with AsyncClient(server_url) as client:
        results = await client.xrd_novelty([(MODEL_GRID_DEG, p) for p in x], plots=True)
    assert len(results) == 3 and all(r.reconstruction_png and r.latent_map_png for r in results)
    written = results[0].save_plots(tmp_path / "first")
    assert [p.name for p in written] == ["first_reconstruction.png", "first_latent_map.png"]
    assert png_size(written[0].read_bytes())[0] >= 400


def test_cli_predicts_xrd_files(server_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    x, y = known_patterns(1, 12)
    files = [str(p) for p in write_pattern_files(tmp_path, "sample_{}.csv", x, header="two_theta,intensity",
                                                 separator=",")]  # fmt: skip
    command = [sys.executable, "-m", "matserve.cli", "predict", "xrd", *files, "--url", server_url, "--plots",
               str(tmp_path / "png"), "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["phase"]["phase"] for row in rows] == [KNOWN[i] for i in y]
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == [
        "sample_0_latent_map.png", "sample_0_reconstruction.png"]  # fmt: skip


def test_invalid_json_and_wrong_content_type_are_refused(server_url: str) -> None:
    for path in ("/v1/xrd/phase", "/v1/xrd/novelty"):
        broken = httpx.post(server_url + path, content=b'{"pattern": {"two_theta_deg": [20.0,', timeout=30,
                            headers={"content-type": "application/json"})  # fmt: skip
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
        assert "two_theta_deg" in broken.json()["error"]["message"]  # the example of a valid body
        text = httpx.post(server_url + path, content=b"20 100\n21 120\n", headers={"content-type": "text/plain"})
        assert text.status_code == 415 and "application/json" in text.json()["error"]["message"]
