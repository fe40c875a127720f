"""The XRD answers' new fields (abstention, mixtures, calibrated novelty, measured range) through the wire schema,
the SDK's result types and ``matserve predict xrd``'s printing.

The server is faked by :class:`httpx.MockTransport` answering hand-built result dicts, so every test here is about
parsing and formatting: what an old (1.0.0-like) answer and a physics-fit answer look like to a user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest

import matserve_client
from matserve import cli
from matserve.api.context import ServingContext
from matserve_client import AsyncClient, Client, XrdNoveltyResult, XrdPhaseComponent, XrdPhaseResult, wire

BASE = "http://matserve.test"

OLD_PHASE = {"phase": "fcc_Fm-3m", "space_group": "Fm-3m", "probability": 0.9, "coverage": 1.0,
             "probabilities": {"fcc_Fm-3m": 0.9, "bcc_Im-3m": 0.06, "hcp_P6_3/mmc": 0.04}}  # fmt: skip
OLD_NOVELTY = {"reconstruction_error": 0.01, "novelty_percentile": 42.0, "is_novel": False,
               "threshold_percentile": 99.0, "latent": [0.0] * 4, "latent_map": [0.0, 0.0],
               "nearest_known_phase": "fcc_Fm-3m", "nearest_known_phase_share": 1.0, "coverage": 1.0}  # fmt: skip
ABSTAINED_PHASE = {
    "phase": None, "space_group": None, "probability": None, "abstained": True,
    "reason": "strong peaks at 31.7° and 45.5° that no known phase explains",
    "probabilities": {"fcc_Fm-3m": 0.03, "bcc_Im-3m": 0.05, "hcp_P6_3/mmc": 0.02}, "probability_unknown": 0.9,
    "best_fit_phase": "bcc_Im-3m", "best_fit_residual": 0.42, "phases": [], "unexplained_fraction": None,
    "coverage": 55 / 70, "measured_range_deg": [35.0, 90.0],
}  # fmt: skip
ABSTAINED_NOVELTY = {**OLD_NOVELTY, "novelty_percentile": 99.9, "is_novel": True, "novelty_score": 0.97,
                     "physics_residual": 0.42, "best_fit_phase": "bcc_Im-3m", "coverage": 55 / 70,
                     "measured_range_deg": [35.0, 90.0]}  # fmt: skip
MIXTURE_PHASE = {
    "phase": "fcc_Fm-3m", "space_group": "Fm-3m", "probability": 0.7, "abstained": False,
    "probabilities": {"fcc_Fm-3m": 0.7, "bcc_Im-3m": 0.03, "hcp_P6_3/mmc": 0.25}, "probability_unknown": 0.02,
    "best_fit_phase": "fcc_Fm-3m", "best_fit_residual": 0.31, "unexplained_fraction": 0.05,
    "phases": [
        {"phase": "fcc_Fm-3m", "space_group": "Fm-3m", "weight_fraction": 0.7, "confidence": 0.95,
         "lattice_a_angstrom": 3.615, "lattice_c_angstrom": None},
        {"phase": "hcp_P6_3/mmc", "space_group": "P6_3/mmc", "weight_fraction": 0.25, "confidence": 0.8,
         "lattice_a_angstrom": 2.507, "lattice_c_angstrom": 4.07},
    ],
    "coverage": 1.0, "measured_range_deg": [20.0, 90.0],
}  # fmt: skip
MIXTURE_NOVELTY = {**OLD_NOVELTY, "novelty_percentile": 60.0, "novelty_score": 0.03, "physics_residual": 0.31,
                   "best_fit_phase": "fcc_Fm-3m", "measured_range_deg": [20.0, 90.0]}  # fmt: skip


class FakeXrdServer:
    """Answers each POST with the next results of ``phase`` or ``novelty`` (one per pattern of the request)."""

    def __init__(self, phase: list[dict[str, Any]], novelty: list[dict[str, Any]], version: str = "2.0.0") -> None:
        self.answers = {"/v1/xrd/phase": list(phase), "/v1/xrd/novelty": list(novelty)}
        self.version = version

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        queue = self.answers[request.url.path]
        results = [queue.pop(0) for _ in body["patterns"]]
        model = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"model": f"xrd_{model}", "version": self.version, "results": results})


def pattern_files(tmp_path: Path, count: int) -> list[str]:
    paths = []
    for k in range(count):
        path = tmp_path / f"scan{k}.xy"
        grid = np.linspace(20, 90, 300)
        path.write_text("".join(f"{t} {1 + (i % 7)}\n" for i, t in enumerate(grid)))
        paths.append(str(path))
    return paths


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``serve(phase, novelty)``: the CLI's ``Client`` talks to a fake server answering those results."""

    def install(phase: list[dict[str, Any]], novelty: list[dict[str, Any]], version: str = "2.0.0") -> None:
        transport = httpx.MockTransport(FakeXrdServer(phase, novelty, version))
        monkeypatch.setattr(matserve_client, "Client",
                            lambda url, timeout: Client(url, timeout=timeout, transport=transport, backoff=0.0))  # fmt: skip

    yield install


def run_cli(files: list[str], capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    code = cli.main(["predict", "xrd", *files, "--url", BASE, *extra])
    return code, capsys.readouterr().out.splitlines()


# -- wire schema ------------------------------------------------------------------------------------------------


def test_an_old_answer_still_validates_with_the_new_fields_at_their_defaults() -> None:
    phase = wire.XrdPhaseResult.model_validate(OLD_PHASE)
    assert (phase.abstained, phase.reason, phase.probability_unknown, phase.phases) == (False, None, None, [])
    assert phase.best_fit_phase is phase.best_fit_residual is phase.unexplained_fraction is None
    assert phase.measured_range_deg is None
    novelty = wire.XrdNoveltyResult.model_validate(OLD_NOVELTY)
    assert novelty.novelty_score is novelty.physics_residual is novelty.best_fit_phase is None
    assert novelty.measured_range_deg is None
    # the server writes answers with exclude_unset: an old answer gains no new keys on the wire
    assert json.loads(phase.model_dump_json(exclude_unset=True)) == OLD_PHASE


def test_an_abstained_answer_and_a_mixture_validate() -> None:
    abstained = wire.XrdPhaseResult.model_validate(ABSTAINED_PHASE)
    assert abstained.phase is None and abstained.abstained and abstained.measured_range_deg == [35.0, 90.0]
    assert sum(abstained.probabilities.values()) + abstained.probability_unknown == pytest.approx(1.0)
    mixture = wire.XrdPhaseResult.model_validate(MIXTURE_PHASE)
    assert [c.phase for c in mixture.phases] == ["fcc_Fm-3m", "hcp_P6_3/mmc"]
    assert mixture.phases[1].lattice_c_angstrom == 4.07 and mixture.phases[0].lattice_c_angstrom is None


def test_the_wire_schema_refuses_malformed_new_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="measured_range_deg"):
        wire.XrdPhaseResult.model_validate({**OLD_PHASE, "measured_range_deg": [35.0]})
    with pytest.raises(pydantic.ValidationError, match="weight_fraction"):
        wire.XrdPhaseResult.model_validate({**OLD_PHASE, "phases": [{"phase": "fcc_Fm-3m", "space_group": "Fm-3m",
                                                                      "confidence": 1.0, "lattice_a_angstrom": 3.6}]})  # fmt: skip
    with pytest.raises(pydantic.ValidationError, match="at most 3 items"):
        wire.XrdPhaseResult.model_validate({**MIXTURE_PHASE, "phases": MIXTURE_PHASE["phases"] * 2})
    with pytest.raises(pydantic.ValidationError, match="phase"):  # phase, space_group, probability: present, or null
        wire.XrdPhaseResult.model_validate({k: v for k, v in OLD_PHASE.items() if k != "phase"})


def test_the_new_fields_are_documented_with_units() -> None:
    phase = wire.XrdPhaseResult.model_json_schema()
    properties = phase["properties"]
    for name in ("abstained", "reason", "probability_unknown", "best_fit_phase", "best_fit_residual", "phases",
                 "unexplained_fraction", "measured_range_deg"):  # fmt: skip
        assert properties[name].get("description"), name
    assert "degrees" in properties["measured_range_deg"]["description"]
    component = phase["$defs"]["XrdPhaseComponent"]["properties"]
    assert "reference intensity ratios" in component["weight_fraction"]["description"]
    assert "Angstrom" in component["lattice_a_angstrom"]["description"]
    novelty = wire.XrdNoveltyResult.model_json_schema()["properties"]
    assert "calibrated probability" in novelty["novelty_score"]["description"]


# -- SDK ----------------------------------------------------------------------------------------------------------


def test_the_sdk_results_carry_the_new_fields(tmp_path: Path) -> None:
    server = FakeXrdServer(
        [OLD_PHASE, ABSTAINED_PHASE, MIXTURE_PHASE], [OLD_NOVELTY, ABSTAINED_NOVELTY, MIXTURE_NOVELTY]
    )
    files = pattern_files(tmp_path, 3)
    with Client(BASE, transport=httpx.MockTransport(server), backoff=0.0) as client:
        old, abstained, mixture = client.classify_xrd(files)
        _, novel, _ = client.xrd_novelty(files)
    assert old.phase_or_unknown == "fcc_Fm-3m" and not old.abstained and old.phases == []
    assert abstained.phase is None and abstained.phase_or_unknown == "unknown"
    assert abstained.reason == ABSTAINED_PHASE["reason"] and abstained.probability_unknown == 0.9
    assert (abstained.best_fit_phase, abstained.best_fit_residual) == ("bcc_Im-3m", 0.42)
    assert abstained.measured_range_deg == [35.0, 90.0] and abstained.source == files[1]
    assert mixture.is_mixture and not old.is_mixture
    assert all(isinstance(c, XrdPhaseComponent) for c in mixture.phases)
    assert mixture.phases[1].weight_fraction == 0.25 and mixture.unexplained_fraction == 0.05
    assert isinstance(novel, XrdNoveltyResult) and novel.novelty_score == 0.97
    assert (novel.physics_residual, novel.best_fit_phase) == (0.42, "bcc_Im-3m")
    with pytest.raises(pydantic.ValidationError):
        mixture.phases[0].confidence = 0.1  # type: ignore[misc]  # results are frozen, components too


async def test_the_async_client_parses_the_same_fields(tmp_path: Path) -> None:
    server = FakeXrdServer([MIXTURE_PHASE], [ABSTAINED_NOVELTY])
    files = pattern_files(tmp_path, 1)
    async with AsyncClient(BASE, transport=httpx.MockTransport(server), backoff=0.0) as client:
        (mixture,) = await client.classify_xrd(files)
        (novelty,) = await client.xrd_novelty(files)
    assert [c.phase for c in mixture.phases] == ["fcc_Fm-3m", "hcp_P6_3/mmc"]
    assert isinstance(mixture.phases[0], XrdPhaseComponent) and novelty.novelty_score == 0.97


def sdk_result(fields: dict[str, Any]) -> XrdPhaseResult:
    return XrdPhaseResult(**fields, model="xrd_phase", version="2.0.0")


def test_summary_names_the_phase_or_unknown_with_p_unknown_and_the_phases() -> None:
    assert sdk_result(OLD_PHASE).summary() == "fcc_Fm-3m (p 0.900)"
    assert sdk_result(ABSTAINED_PHASE).summary() == (
        "unknown (abstained: strong peaks at 31.7° and 45.5° that no known phase explains); best fit bcc_Im-3m, "
        "residual 42.0%; P(unknown) 0.900"
    )
    assert sdk_result(MIXTURE_PHASE).summary() == (
        "mixture: fcc_Fm-3m 70.0% (confidence 0.95), hcp_P6_3/mmc 25.0% (confidence 0.80); unexplained 5.0%; "
        "P(unknown) 0.020"
    )
    single = {**MIXTURE_PHASE, "phases": MIXTURE_PHASE["phases"][:1], "probability": 0.97}
    assert sdk_result(single).summary() == "fcc_Fm-3m (p 0.970); unexplained 5.0%; P(unknown) 0.020"
    bare = {**ABSTAINED_PHASE, "reason": None, "best_fit_phase": None, "probability_unknown": None}
    assert sdk_result(bare).summary() == "unknown (abstained)"


def test_a_component_describes_itself_with_its_lattice() -> None:
    hcp = XrdPhaseComponent(**MIXTURE_PHASE["phases"][1])
    assert hcp.describe() == "hcp_P6_3/mmc 25.0% (confidence 0.80, a = 2.507 Å, c = 4.070 Å)"
    assert XrdPhaseComponent(**MIXTURE_PHASE["phases"][0]).describe().endswith("(confidence 0.95, a = 3.615 Å)")


# -- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_prints_old_answers_as_before_with_dashes_for_the_new_columns(
    tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    serve([OLD_PHASE], [OLD_NOVELTY], version="1.0.0")
    code, lines = run_cli(pattern_files(tmp_path, 1), capsys)
    assert code == 0
    assert lines[0] == "# xrd_phase 1.0.0, xrd_novelty 1.0.0"
    assert lines[1].split() == ["file", "phase", "p", "p_unk", "novelty", "pct", "score", "novel", "nearest", "known"]
    assert lines[2].split() == ["scan0.xy", "fcc_Fm-3m", "0.900", "-", "42.0", "-", "no", "fcc_Fm-3m"]
    assert len(lines) == 3  # no detail lines for an old answer of a full pattern


def test_cli_prints_unknown_with_the_reason_best_fit_and_residual(
    tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    serve([ABSTAINED_PHASE], [ABSTAINED_NOVELTY])
    code, lines = run_cli(pattern_files(tmp_path, 1), capsys)
    assert code == 0
    assert lines[2].split() == ["scan0.xy", "unknown", "-", "0.900", "99.9", "0.970", "yes", "fcc_Fm-3m"]
    assert lines[3] == (
        "    unknown (abstained: strong peaks at 31.7° and 45.5° that no known phase explains); best fit bcc_Im-3m, "
        "residual 42.0% of the signal"
    )
    assert lines[4] == "    measured 35.00-90.00° 2θ (Cu Kα) of 20-90°"
    assert len(lines) == 5


def test_cli_takes_the_best_fit_from_the_novelty_answer_when_the_phase_answer_has_none(
    tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    serve([{**ABSTAINED_PHASE, "best_fit_phase": None, "best_fit_residual": None, "reason": None}],
          [ABSTAINED_NOVELTY])  # fmt: skip
    _, lines = run_cli(pattern_files(tmp_path, 1), capsys)
    assert lines[3] == "    unknown (abstained); best fit bcc_Im-3m, residual 42.0% of the signal"


def test_cli_prints_every_component_of_a_mixture_and_the_unexplained_fraction(
    tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    serve([OLD_PHASE, MIXTURE_PHASE], [OLD_NOVELTY, MIXTURE_NOVELTY])
    code, lines = run_cli(pattern_files(tmp_path, 2), capsys)
    assert code == 0
    assert lines[2].split()[:2] == ["scan0.xy", "fcc_Fm-3m"] and lines[3].startswith("scan1.xy")
    assert lines[3].split() == ["scan1.xy", "fcc_Fm-3m", "0.700", "0.020", "60.0", "0.030", "no", "fcc_Fm-3m"]
    assert lines[4:] == [
        "    mixture of 2 phases (signal fraction):",
        "      fcc_Fm-3m 70.0% (confidence 0.95, a = 3.615 Å)",
        "      hcp_P6_3/mmc 25.0% (confidence 0.80, a = 2.507 Å, c = 4.070 Å)",
        "      unexplained 5.0% of the signal",
    ]


def test_cli_prints_a_single_fitted_phase_with_its_lattice(
    tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    single = {**MIXTURE_PHASE, "phases": MIXTURE_PHASE["phases"][:1], "unexplained_fraction": 0.02}
    serve([single], [MIXTURE_NOVELTY])
    _, lines = run_cli(pattern_files(tmp_path, 1), capsys)
    assert lines[3:] == ["    fitted 1 phase (signal fraction):", "      fcc_Fm-3m 70.0% (confidence 0.95, a = 3.615 Å)",
                         "      unexplained 2.0% of the signal"]  # fmt: skip


def test_cli_json_carries_the_new_fields(tmp_path: Path, serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    serve([ABSTAINED_PHASE, MIXTURE_PHASE], [ABSTAINED_NOVELTY, MIXTURE_NOVELTY])
    code = cli.main(["predict", "xrd", *pattern_files(tmp_path, 2), "--url", BASE, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert rows[0]["phase"]["abstained"] is True and rows[0]["phase"]["phase"] is None
    assert rows[0]["novelty"]["novelty_score"] == 0.97 and rows[0]["phase"]["measured_range_deg"] == [35.0, 90.0]
    assert rows[1]["phase"]["phases"][1] == MIXTURE_PHASE["phases"][1]


# -- the served model through the SDK (in process) ----------------------------------------------------------------


async def test_partial_lab_scans_reach_the_sdk_with_their_measured_range(context: ServingContext) -> None:
    """The served version (which fills none of the physics fields) through the routes, the wire schema and the
    async SDK: a 35-90° scan is classified with its range, a 60-90° one refused saying what is needed."""
    import dataclasses

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from matserve.service import build_app

    app = build_app(context.settings)
    app.state.context = dataclasses.replace(context, settings=context.settings)
    transport = httpx.ASGITransport(app=Starlette(routes=[Mount("/v1", app=app)]))
    lab = np.linspace(35, 90, 2750)
    lab_intensity = (
        10 + 1000 * np.exp(-0.5 * ((lab - 43.3) / 0.1) ** 2) + 600 * np.exp(-0.5 * ((lab - 50.4) / 0.1) ** 2)
    )
    short = np.linspace(60, 90, 1500)
    async with AsyncClient(BASE, transport=transport, backoff=0.0) as client:
        (phase,) = await client.classify_xrd([(lab, lab_intensity)], binary=False)
        (novelty,) = await client.xrd_novelty([(lab, lab_intensity)], binary=False)
        with pytest.raises(matserve_client.InvalidInputError, match=r"a span of at least 35° inside 20-90° is needed"):
            await client.classify_xrd([(short, 1 + np.sin(short) ** 2)], binary=False)
    assert phase.measured_range_deg == [35.0, 90.0] and phase.coverage == pytest.approx(55 / 70, abs=1e-6)
    assert novelty.measured_range_deg == [35.0, 90.0]
    assert phase.phase_or_unknown in phase.probabilities or phase.abstained
