"""Soak test (never run by CI): mixed traffic at high concurrency against a real server, through four phases.

Starts its own ``redis-server`` and ``matserve serve`` (prediction cache and rate limiting off, admin API on) over
a copy of ``models/`` in a temporary folder, then keeps ``--concurrency`` asyncio clients sending a mix of
formation-enthalpy batches, XRD phase and novelty requests, scattering images (256x256 NPY), EBSD patterns
(60x60 NPY), ``GET /v1/models`` and ``/readyz`` while, phase by phase (each ``--duration-s`` long at least):

a. nothing else happens (steady load);
b. Redis is SIGKILLed and restarted (empty); jobs are submitted before, during and after;
c. the active versions of scattering_sorter and ebsd_indexer are switched (``ACTIVE`` rewritten in the copy, then
   ``POST /v1/admin/registry/reload``) to the previous version and back; every answer must name a version that
   could be active while the request ran;
d. a 20,000-formula job is submitted, the API server's whole process group is SIGKILLed mid-job, a new server
   is started on the same Redis, and the job must finish with every item answered.

A request fails on a 5xx, a connection error, a timeout, any other unexpected status, or an answer of the wrong
shape; those that fail inside a planned downtime (the API server down in d; the job routes while Redis is down in
b) are counted apart. Prints per phase requests, failures, p50/p99 latency, requests/s and the server's RSS (the
process tree) at its start and end, writes ``bench/results/soak.json``, and exits 1 if anything failed.

Run: ``PYTHONPATH=. .venv/bin/python bench/soak.py [--duration-s 60] [--concurrency 64]`` (``make soak``).

Over 500 lines on purpose: one script holds the traffic mix, the four fault phases and their checks, so that a
reader sees the whole soak in one place; it is a benchmark outside the package, imported by nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

import matserve
from matserve.devserver import ServerProcess, server_process
from matserve.settings import REPO_MODELS_DIR
from tests.redis_server import RedisServer
from training.xrd import simulate as xrd_simulate
from training.xrd.structures import KNOWN_PHASES, NOVEL_PHASES

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
SWITCHED_MODELS = ("scattering_sorter", "ebsd_indexer")
JOB_ITEMS = 20_000
REDIS_RETRY_AFTER_S = 1.0
ELEMENTS = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "Sc", "Y", "La", "Ti", "Zr", "V", "Nb",
            "Cr", "Mo", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]  # fmt: skip
ANIONS = ["O", "S", "Se", "N", "P", "F", "Cl", "Br"]
MIX = {"formation_enthalpy": 4, "xrd_phase": 2, "xrd_novelty": 2, "scattering": 2, "ebsd": 2, "models": 1,
       "readyz": 1}  # fmt: skip
"""Relative frequency of each request kind in the mixed traffic."""
Check = Callable[[httpx.Response], None]


@dataclass
class Record:
    """One request: its phase (when it started), kind, monotonic start and end, HTTP status, error (None: ok)."""

    phase: str
    kind: str
    start: float
    end: float
    status: int | None
    error: str | None
    body: str = ""


@dataclass
class Window:
    """A planned downtime: failures of requests overlapping it are expected (``scope``: "all" or "jobs")."""

    scope: str
    start: float
    end: float = math.inf


@dataclass
class Soak:
    """Shared state of the load generators and the phase scripts."""

    url: str
    server: ServerProcess
    client: httpx.AsyncClient
    token: str
    phase: str = ""
    phase_start: float = 0.0
    stop: bool = False
    records: list[Record] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    served: dict[str, list[list[Any]]] = field(default_factory=dict)
    """Per switched model: ``[from, to, version]`` spans during which that version may answer."""
    events: dict[str, list[str]] = field(default_factory=dict)
    checks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    versions: dict[str, Counter[str]] = field(default_factory=dict)
    """Per phase: answers of the switched models by ``"<model> <version>"``."""

    def event(self, message: str) -> None:
        """Log a fault or milestone of the current phase, with the time since the phase started."""
        line = f"+{time.monotonic() - self.phase_start:.1f} s {message}"
        self.events.setdefault(self.phase, []).append(line)
        print(f"  [{self.phase}] {line}", flush=True)

    def check(self, name: str, ok: bool, detail: str) -> None:
        """Record a verdict that is not one request (e.g. a job answered every item)."""
        self.checks.setdefault(self.phase, []).append({"check": name, "ok": ok, "detail": detail})
        print(f"  [{self.phase}] check {'ok' if ok else 'FAILED'}: {name}: {detail}", flush=True)

    def planned(self, record: Record) -> bool:
        """Whether a failed request overlaps a planned downtime that covers its kind."""
        return any(
            (w.scope == "all" or record.kind.startswith("job")) and record.start < w.end and record.end >= w.start
            for w in self.windows
        )


def formulas(n: int, seed: int) -> list[str]:
    """``n`` valid ternary formulas (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(ELEMENTS, 2)
        out.append(f"{a}{rng.randint(1, 5)}{b}{rng.randint(1, 5)}{rng.choice(ANIONS)}{rng.randint(1, 9)}")
    return out


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def scattering_images(n: int, rng: np.random.Generator) -> list[bytes]:
    """256x256 int32 detector images: Poisson background, one or two rings, a diffuse halo, a beam stop."""
    yy, xx = np.mgrid[:256, :256]
    images = []
    for _ in range(n):
        centre = rng.uniform(96, 160, 2)
        distance = np.hypot(yy - centre[0], xx - centre[1])
        counts = 50 * np.exp(-distance / rng.uniform(10, 40))
        for radius in rng.uniform(20, 110, rng.integers(1, 3)):
            counts += rng.uniform(50, 300) * np.exp(-((distance - radius) ** 2) / (2 * rng.uniform(1, 4) ** 2))
        image = rng.poisson(counts + 5).astype(np.int32)
        image[distance < 6] = 0
        images.append(npy(image))
    return images


def ebsd_patterns(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 60, 60)`` uint8 Kikuchi-like patterns: a bright centre, 3-6 bands at random angles, Poisson noise."""
    yy, xx = (np.mgrid[:60, :60] - 29.5) / 30
    patterns = []
    for _ in range(n):
        signal = 40 * np.exp(-(xx**2 + yy**2) / 0.8)
        for _ in range(rng.integers(3, 7)):
            theta, offset, width = rng.uniform(0, np.pi), rng.uniform(-0.7, 0.7), rng.uniform(0.03, 0.08)
            signal += 25 * np.exp(-((xx * np.cos(theta) + yy * np.sin(theta) - offset) ** 2) / (2 * width**2))
        patterns.append(np.clip(rng.poisson(signal + 20), 0, 255).astype(np.uint8))
    return np.stack(patterns)


class Traffic:
    """Pre-built request bodies and the checks of their answers; :meth:`draw` picks the next request."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        known = xrd_simulate.single_phase_set([p.name for p in KNOWN_PHASES], 8, rng, "float32")["x"]
        novel = xrd_simulate.single_phase_set([p.name for p in NOVEL_PHASES], 3, rng, "float32")["x"]
        grid = np.round(xrd_simulate.TWO_THETA_DEG, 4).tolist()
        self.xrd = [json.dumps({"two_theta_deg": grid, "intensity": np.round(1000 * x.astype(np.float64), 2).tolist()})
                    for x in np.concatenate([known, novel])]  # fmt: skip
        self.formulas = formulas(2000, seed)
        self.scattering = scattering_images(8, rng)
        self.ebsd = ebsd_patterns(48, rng)
        self.kinds, self.weights = list(MIX), list(MIX.values())

    def draw(self, rng: random.Random) -> tuple[str, str, str, dict[str, Any], Check]:
        """``(kind, method, path, httpx keyword arguments, check)`` of one random request."""
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "formation_enthalpy":
            sent = rng.sample(self.formulas, rng.randint(1, 32))
            return kind, "POST", PATHS[kind], {"json": {"formulas": sent}}, check_results(kind, len(sent), sent)
        if kind in ("xrd_phase", "xrd_novelty"):
            chosen = rng.sample(self.xrd, rng.randint(1, 8))
            body = ('{"patterns": [' + ", ".join(chosen) + "]}").encode()
            return kind, "POST", PATHS[kind], {"content": body, "headers": JSON}, check_results(kind, len(chosen))
        if kind == "scattering":
            body = rng.choice(self.scattering)
            return kind, "POST", PATHS[kind], {"content": body, "headers": NPY}, check_results(kind, 1)
        if kind == "ebsd":
            count = rng.randint(1, 8)
            start = rng.randrange(len(self.ebsd) - count)
            body = npy(self.ebsd[start : start + count])
            return kind, "POST", PATHS[kind], {"content": body, "headers": NPY}, check_results(kind, count)
        return kind, "GET", PATHS[kind], {}, check_models if kind == "models" else check_status(200)


JSON = {"content-type": "application/json"}
NPY = {"content-type": "application/x-npy"}
PATHS = {"formation_enthalpy": "/v1/formation-enthalpy", "xrd_phase": "/v1/xrd/phase", "xrd_novelty": "/v1/xrd/novelty",
         "scattering": "/v1/scattering/sort", "ebsd": "/v1/ebsd/index", "models": "/v1/models", "readyz": "/readyz"}  # fmt: skip
RESULT_OK: dict[str, Callable[[dict[str, Any]], bool]] = {
    "formation_enthalpy": lambda r: isinstance(r["formation_enthalpy_ev_per_atom"], float) and r["error"] is None,
    "xrd_phase": lambda r: abs(sum(r["probabilities"].values()) - 1) < 1e-3 and r["phase"] in r["probabilities"],
    "xrd_novelty": lambda r: math.isfinite(r["reconstruction_error"]) and isinstance(r["is_novel"], bool),
    "scattering": lambda r: r["error"] is None and r["technique"] in ("saxs", "waxs", "gisaxs", "giwaxs"),
    "ebsd": lambda r: len(r["quaternion"]) == 4 and abs(float(np.linalg.norm(r["quaternion"])) - 1) < 1e-3,
}
"""What one result of each prediction route must look like."""


def check_status(status: int) -> Check:
    def check(response: httpx.Response) -> None:
        assert response.status_code == status, f"status {response.status_code}, expected {status}"

    return check


def check_results(kind: str, count: int, formulas: list[str] | None = None) -> Check:
    """200 with ``count`` results, each of the right shape (and, for formulas, answering the formula sent)."""

    def check(response: httpx.Response) -> None:
        check_status(200)(response)
        results = response.json()["results"]
        assert len(results) == count, f"{len(results)} results for {count} items"
        for i, result in enumerate(results):
            assert RESULT_OK[kind](result), f"results[{i}] has the wrong shape: {result}"
            assert formulas is None or result["formula"] == formulas[i], f"results[{i}] is not for {formulas[i]!r}"

    return check


def check_models(response: httpx.Response) -> None:
    check_status(200)(response)
    served = {m["name"] for m in response.json()["models"] if m["served"]}
    assert served >= {"formation_enthalpy", "xrd_phase", "xrd_novelty", *SWITCHED_MODELS}, served


async def call(soak: Soak, kind: str, method: str, path: str, check: Check, **kwargs: Any) -> httpx.Response | None:
    """Send one request to the current server, check it and record it; None on a connection error or timeout."""
    phase, url, start = soak.phase, soak.url, time.monotonic()
    try:
        response = await soak.client.request(method, url + path, **kwargs)
    except httpx.HTTPError as error:
        end = time.monotonic()
        sent = len(kwargs.get("content", json.dumps(kwargs["json"]).encode() if "json" in kwargs else b""))
        note = f"(no response: failed {end - start:.2f} s after a request with a {sent}-byte body was sent)"
        soak.records.append(Record(phase, kind, start, end, None, f"{method} {path}: {error!r}", note))
        return None
    end, error = time.monotonic(), None
    try:
        check(response)
        model = SWITCHED_MODELS[kind == "ebsd"] if kind in ("scattering", "ebsd") else None
        if model in soak.served:
            version = response.json()["version"]
            soak.versions.setdefault(phase, Counter())[f"{model} {version}"] += 1
            allowed = {v for lo, hi, v in soak.served[model] if lo <= end and hi >= start}
            assert version in allowed, f"{model} answered with version {version}, could be active: {sorted(allowed)}"
    except (AssertionError, KeyError, TypeError, ValueError) as failure:
        error = f"{method} {path} -> {response.status_code}: {str(failure)[:200]}"
    body = response.text[:500] if error else ""
    soak.records.append(Record(phase, kind, start, end, response.status_code, error, body))
    return response


async def load(soak: Soak, traffic: Traffic, seed: int) -> None:
    """One client of the mixed traffic, until ``soak.stop``."""
    rng = random.Random(seed)
    while not soak.stop:
        kind, method, path, kwargs, check = traffic.draw(rng)
        if await call(soak, kind, method, path, check, **kwargs) is None:
            await asyncio.sleep(0.5)  # the server is down: do not spin


async def submit_job(soak: Soak, items: list[str]) -> str | None:
    body = {"model": "formation_enthalpy", "inputs": items}
    response = await call(soak, "job_submit", "POST", "/v1/jobs", check_status(202), json=body)
    return response.json()["job_id"] if response is not None and response.status_code == 202 else None


async def job_status(soak: Soak, job_id: str) -> dict[str, Any] | None:
    response = await call(soak, "job_status", "GET", f"/v1/jobs/{job_id}", check_status(200))
    return response.json() if response is not None and response.status_code == 200 else None


async def wait_job(soak: Soak, job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """Poll a job until it finishes (its last status) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await job_status(soak, job_id)
        if status is not None and status["finished_at"] is not None:
            return status
        await asyncio.sleep(0.5)
    return None


async def verify_job(soak: Soak, name: str, job_id: str, items: list[str], timeout_s: float) -> None:
    """Wait for a job, read every result page and check that each item was answered, in order."""
    final = await wait_job(soak, job_id, timeout_s)
    if final is None or final["state"] != "succeeded" or final["done"] != len(items):
        soak.check(name, False, f"job {job_id} not succeeded in {timeout_s:.0f} s: {final}")
        return
    results: list[Any] = []
    while len(results) < len(items):
        response = await call(soak, "job_results", "GET", f"/v1/jobs/{job_id}/results", check_status(200),
                              params={"offset": len(results), "limit": 10_000})  # fmt: skip
        if response is None or response.status_code != 200:
            soak.check(name, False, f"job {job_id}: results page at {len(results)} unreadable")
            return
        page = response.json()["results"]
        if not page:
            soak.check(name, False, f"job {job_id}: empty results page at {len(results)}")
            return
        results.extend(page)
    answered = sum(1 for r, f in zip(results, items, strict=True)
                   if r is not None and r["formula"] == f and r["formation_enthalpy_ev_per_atom"] is not None)  # fmt: skip
    detail = (f"job {job_id}: {final['state']}, {answered}/{len(items)} items answered, chunks "
              f"{final['chunks_done']}/{final['chunks_total']} done, {final['chunk_starts']} chunk starts")  # fmt: skip
    soak.check(name, answered == len(items), detail)


def server_rss_mib(server: ServerProcess) -> float:
    """Resident memory of the server process and all its descendants, MiB."""
    total = 0
    try:
        root = psutil.Process(server.process.pid)
        for process in [root, *root.children(recursive=True)]:
            total += process.memory_info().rss
    except psutil.NoSuchProcess:  # gone (killed) or a child exited meanwhile
        pass
    return total / 2**20


def write_active(models: Path, targets: dict[str, str]) -> None:
    """Rewrite ``models/<name>/ACTIVE`` atomically (temporary file, then rename) in the copied registry."""
    for name, version in targets.items():
        temporary = models / name / "ACTIVE.tmp"
        temporary.write_text(version + "\n")
        os.replace(temporary, models / name / "ACTIVE")


async def phase_redis(soak: Soak, redis: RedisServer, duration_s: float) -> None:
    """b: jobs before, during and after a SIGKILL of Redis; predictions must go on meanwhile."""
    await asyncio.sleep(0.15 * duration_s)
    before = await submit_job(soak, formulas(2000, seed=1))
    await asyncio.sleep(0.15 * duration_s)
    window = Window("jobs", time.monotonic())
    soak.windows.append(window)
    await asyncio.to_thread(redis.kill)
    soak.event(f"redis-server SIGKILLed (job {before} submitted before)")
    during = await call(soak, "job_submit", "POST", "/v1/jobs", check_status(202),
                        json={"model": "formation_enthalpy", "inputs": ["NaCl"]})  # fmt: skip
    detail = "no answer" if during is None else f"{during.status_code} {during.text[:200]}"
    soak.check(
        "job submitted while Redis is down answers 503", during is not None and during.status_code == 503, detail
    )
    await asyncio.sleep(0.2 * duration_s)
    await asyncio.to_thread(redis.start)
    soak.event("redis-server restarted (empty: no persistence)")
    await asyncio.sleep(REDIS_RETRY_AFTER_S + 1)
    window.end = time.monotonic()
    answered = [r for r in soak.records if r.phase == soak.phase and not r.kind.startswith("job")
                and window.start <= r.start and r.end <= window.end]  # fmt: skip
    ok = sum(1 for r in answered if r.error is None)
    soak.check("predictions answered while Redis was down", ok > 0 and ok == len(answered), f"{ok}/{len(answered)}")
    items = formulas(2000, seed=2)
    after = await submit_job(soak, items)
    if after is None:
        soak.check("job after the Redis restart", False, "submission failed")
    else:
        await verify_job(soak, "job after the Redis restart answers every item", after, items, 300)
    if before is not None:
        lost = await soak.client.get(f"{soak.url}/v1/jobs/{before}")
        soak.event(f"job {before} from before the kill: {lost.status_code} (lost with Redis's data, as expected)")


async def phase_switch(soak: Soak, models: Path, duration_s: float) -> None:
    """c: switch scattering_sorter and ebsd_indexer to their previous version, then back, under load."""
    listing = (await soak.client.get(f"{soak.url}/v1/models")).json()["models"]
    original, previous = {}, {}
    for model in listing:
        versions = [v["version"] for v in model["versions"]]
        if model["name"] in soak.served and len(versions) >= 2:
            original[model["name"]] = model["active_version"]
            previous[model["name"]] = versions[versions.index(model["active_version"]) - 1]
    for at, targets in ((0.25, previous), (0.6, original)):
        await asyncio.sleep(at * duration_s - (time.monotonic() - soak.phase_start))
        written = time.monotonic()
        for name, version in targets.items():
            soak.served[name].append([written, math.inf, version])
        await asyncio.to_thread(write_active, models, targets)

        def reloaded(response: httpx.Response, targets: dict[str, str] = targets) -> None:
            assert response.status_code == 200, f"status {response.status_code}"
            active = {n: m["active_version"] for n, m in response.json()["models"].items() if n in targets}
            assert active == targets, f"active after reload {active}, wanted {targets}"

        headers = {"Authorization": f"Bearer {soak.token}", "Content-Length": "0"}
        response = await call(soak, "admin_reload", "POST", "/v1/admin/registry/reload", reloaded, content=b"",
                              headers=headers)  # fmt: skip
        done = time.monotonic()
        for name, version in targets.items():
            for span in soak.served[name]:
                if span[2] != version and span[1] == math.inf:
                    span[1] = done  # the version switched away from may answer until the reload returned
        status = "no answer" if response is None else response.status_code
        soak.event(f"ACTIVE set to {targets}; reload answered {status} in {done - written:.2f} s")


async def phase_api_kill(soak: Soak, stack: ExitStack, start_server: Callable[[str], Any], duration_s: float) -> None:
    """d: SIGKILL the API server mid-job, start a new one on the same Redis; the job must lose nothing."""
    await asyncio.sleep(0.1 * duration_s)
    items = formulas(JOB_ITEMS, seed=3)
    job_id = await submit_job(soak, items)
    if job_id is None:
        soak.check("20,000-item job", False, "submission failed")
        return
    status, deadline = None, time.monotonic() + 300
    while status is None or (status["done"] == 0 and status["finished_at"] is None):
        if time.monotonic() > deadline:
            soak.check("20,000-item job", False, f"no chunk done in 300 s: {status}")
            return
        await asyncio.sleep(0.1)
        status = await job_status(soak, job_id)
    if status["finished_at"] is not None:
        soak.check("API killed mid-job", False, f"job finished before the kill: {status}")
    window = Window("all", time.monotonic())
    soak.windows.append(window)
    rss = server_rss_mib(soak.server)
    await asyncio.to_thread(soak.server.kill)
    soak.event(f"API server process group SIGKILLed at {status['done']}/{len(items)} items done (RSS {rss:.0f} MiB)")
    soak.server = await asyncio.to_thread(stack.enter_context, start_server("server-2.log"))
    soak.url, window.end = soak.server.url, time.monotonic()
    soak.event(f"new API server ready at {soak.url} after {window.end - window.start:.1f} s")
    await verify_job(soak, "job killed mid-run finishes with every item answered", job_id, items, 900)


async def run_phase(soak: Soak, name: str, duration_s: float, script: Awaitable[None] | None) -> dict[str, Any]:
    """Run one phase: its script (if any) alongside the load, for ``duration_s`` at least."""
    soak.phase, soak.phase_start = name, time.monotonic()
    print(f"phase {name} ...", flush=True)
    rss_start = server_rss_mib(soak.server)

    async def guarded() -> None:
        try:
            await script  # type: ignore[misc]
        except Exception as error:  # a crashed script is a failed check, not a crashed soak
            soak.check("phase script", False, repr(error))

    await asyncio.gather(asyncio.sleep(duration_s), *([guarded()] if script is not None else []))
    wall_s, rss_end = time.monotonic() - soak.phase_start, server_rss_mib(soak.server)
    try:  # the server's own count of connections it closed for slow headers or bodies (if it has the metric)
        metrics = (await soak.client.get(f"{soak.url}/metrics")).text.splitlines()
    except httpx.HTTPError as error:
        metrics = [f"unreadable: {error!r}"]
    timeouts = [line for line in metrics if line.startswith("matserve_http_timeouts_total")]
    return {"phase": name, "wall_s": wall_s, "rss_start_mib": rss_start, "rss_end_mib": rss_end,
            "server_http_timeouts_at_end": timeouts}  # fmt: skip


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return float(np.percentile(latencies, q) * 1000) if latencies else None


def summarize(soak: Soak, phase: dict[str, Any]) -> dict[str, Any]:
    """Counts, latencies and failures of a phase's requests (planned-downtime failures apart)."""
    mine = [r for r in soak.records if r.phase == phase["phase"]]
    planned = [r for r in mine if r.error is not None and soak.planned(r)]
    counted = [r for r in mine if r.error is None or not soak.planned(r)]
    failed = [r for r in counted if r.error is not None]
    kinds = {}
    for kind in sorted({r.kind for r in counted}):
        of_kind = [r for r in counted if r.kind == kind]
        latencies = [r.end - r.start for r in of_kind]
        kinds[kind] = {"requests": len(of_kind), "failed": sum(r.error is not None for r in of_kind),
                       "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}  # fmt: skip
    latencies = [r.end - r.start for r in counted]
    errors = Counter(r.error for r in failed)
    bodies = {r.error: r.body for r in reversed(failed)}  # the first response of each kind of failure
    return {**phase, "requests": len(counted), "failed": len(failed), "during_planned_downtime": len(planned),
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "requests_per_s": len(counted) / phase["wall_s"], "by_kind": kinds,
            "answers_by_version": dict(sorted(soak.versions.get(phase["phase"], Counter()).items())),
            "events": soak.events.get(phase["phase"], []), "checks": soak.checks.get(phase["phase"], []),
            "failures": [{"count": n, "error": e, "response": bodies[e]} for e, n in errors.most_common(20)],
            "planned_downtime_statuses": dict(Counter(str(r.status) for r in planned))}  # fmt: skip


def show(report: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    print(f"\n== {report['title']} ({report['wall_s']:.0f} s)")
    print(f"requests {report['requests']}, failed {report['failed']}, during planned downtime "
          f"{report['during_planned_downtime']}, p50 {ms(report['p50_ms'])} ms, p99 {ms(report['p99_ms'])} ms, "
          f"{report['requests_per_s']:.1f} req/s, server RSS {report['rss_start_mib']:.0f} -> "
          f"{report['rss_end_mib']:.0f} MiB")  # fmt: skip
    print(f"  {'kind':<20}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for kind, row in report["by_kind"].items():
        print(f"  {kind:<20}{row['requests']:>9}{row['failed']:>8}{ms(row['p50_ms']):>9}{ms(row['p99_ms']):>9}")
    if report["server_http_timeouts_at_end"]:
        print(f"  server's matserve_http_timeouts_total at the end: {report['server_http_timeouts_at_end']}")
    if report["answers_by_version"]:
        print(f"  answers by version: {report['answers_by_version']}")
    for line in report["events"]:
        print(f"  event {line}")
    for check in report["checks"]:
        print(f"  check {'ok' if check['ok'] else 'FAILED'}: {check['check']}: {check['detail']}")
    for failure in report["failures"]:
        print(f"  FAILURE x{failure['count']}: {failure['error']}; first response: {failure['response'][:300]!r}")


def copy_registry(source: Path, target: Path) -> None:
    """``target/<name>/<version>/``: ``ACTIVE`` files and cards copied, the version folders' other files
    symlinked (the registry follows symlinks when it checks sha256): rewriting ``ACTIVE`` never touches the repo."""
    for file in sorted(f for f in source.rglob("*") if f.is_file()):
        relative = file.relative_to(source)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if len(relative.parts) == 3 and file.name != "card.json":
            (target / relative).symlink_to(file.resolve())
        else:
            shutil.copy2(file, target / relative)


TITLES = {"a": "a: steady load", "b": "b: Redis SIGKILLed and restarted mid-load",
          "c": "c: active versions switched twice mid-load (admin reload)",
          "d": "d: API server SIGKILLed mid-job and restarted on the same Redis"}  # fmt: skip


async def soak_run(args: argparse.Namespace, workdir: Path, stack: ExitStack) -> list[dict[str, Any]]:
    """Start Redis and the server, run the four phases and return their reports."""
    models = workdir / "models"
    copy_registry(REPO_MODELS_DIR, models)
    # Both servers run a snapshot of the package taken now: the restart in d restarts the same code, even when
    # the working tree changes meanwhile (PYTHONPATH comes before the editable install's path).
    shutil.copytree(Path(matserve.__file__).parent, workdir / "code" / "matserve",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    redis = RedisServer(workdir)
    redis.start()
    stack.callback(redis.stop)
    token = secrets.token_hex(16)
    env = {"REDIS_URL": redis.url, "MATSERVE_ADMIN_TOKEN": token, "MATSERVE_CACHE": "0",
           "MATSERVE_RATE_LIMIT_PER_MINUTE": "0", "MATSERVE_REDIS_RETRY_AFTER_S": str(REDIS_RETRY_AFTER_S),
           "MATSERVE_JOB_CHUNK_SIZE": "500", "MATSERVE_JOB_CLAIM_IDLE_S": "10",
           "NUMBA_CACHE_DIR": str(workdir / "numba"),
           "PYTHONPATH": os.pathsep.join([str(workdir / "code"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip

    def start_server(log_name: str) -> Any:
        return server_process(models, workdir / log_name, env, ready_timeout_s=300)

    print(f"starting redis-server and matserve serve (logs in {workdir}) ...", flush=True)
    server = stack.enter_context(start_server("server-1.log"))
    traffic = Traffic()
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8,
                          keepalive_expiry=args.keepalive_expiry_s)  # fmt: skip
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        soak = Soak(url=server.url, server=server, client=client, token=token)
        listing = (await client.get(f"{server.url}/v1/models")).json()["models"]
        soak.served = {m["name"]: [[-math.inf, math.inf, m["active_version"]]] for m in listing
                       if m["name"] in SWITCHED_MODELS}  # fmt: skip
        workers = [asyncio.create_task(load(soak, traffic, seed)) for seed in range(args.concurrency)]
        duration = args.duration_s
        phases = [await run_phase(soak, "a", duration, None),
                  await run_phase(soak, "b", duration, phase_redis(soak, redis, duration)),
                  await run_phase(soak, "c", duration, phase_switch(soak, models, duration)),
                  await run_phase(soak, "d", duration, phase_api_kill(soak, stack, start_server, duration))]  # fmt: skip
        soak.stop = True
        await asyncio.gather(*workers)
    return [{"title": TITLES[p["phase"]], **summarize(soak, p)} for p in phases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds of load per phase (at least)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument("--keepalive-expiry-s", type=float, default=2.0,
                        help="close idle client connections after this long: below the server's keep-alive timeout "
                        "(uvicorn's 5 s), else a request can be sent on a connection the server is closing (httpx's "
                        "default, 5, shows that race as a few ReadErrors per run)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) even on success")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="matserve-soak-"))
    started = time.monotonic()
    with ExitStack() as stack:
        reports = asyncio.run(soak_run(args, workdir, stack))
    for report in reports:
        show(report)
    failed = sum(r["failed"] for r in reports)
    failed_checks = sum(not c["ok"] for r in reports for c in r["checks"])
    summary = {"passed": failed == 0 and failed_checks == 0, "requests": sum(r["requests"] for r in reports),
               "failed": failed, "failed_checks": failed_checks,
               "during_planned_downtime": sum(r["during_planned_downtime"] for r in reports),
               "wall_s": time.monotonic() - started, "duration_s_per_phase": args.duration_s,
               "concurrency": args.concurrency, "keepalive_expiry_s": args.keepalive_expiry_s,
               "cpu_count": os.cpu_count()}  # fmt: skip
    print(f"\nsoak {'PASSED' if summary['passed'] else 'FAILED'}: {summary['requests']} requests in 4 phases, "
          f"{failed} failed, {failed_checks} failed checks, {summary['during_planned_downtime']} during planned "
          f"downtime, {summary['wall_s']:.0f} s at concurrency {args.concurrency}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "phases": reports}, indent=2) + "\n")
    if summary["passed"] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"server and redis logs kept in {workdir}")
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
