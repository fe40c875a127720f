"""Batch jobs against real servers, workers and redis-server: lifecycle, restarts, killed workers, cancel, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from matserve.devserver import running_server, running_worker, server_process
from matserve.jobs import GROUP, STREAM, RedisJobStore
from matserve_client import AsyncClient, Client, NotFoundError, ServiceUnavailableError
from tests.conftest import MATSERVE, MODELS_DIR, REDIS_STACK_ENV, RedisStack
from tests.redis_server import RedisServer

T = TypeVar("T")
MODEL = "formation_enthalpy"
BAD = ["Xx2", "NaCl(", "OgCl", ""]


def formulas(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct formulas, mostly valid compounds, with a few unparseable ones and elements mixed in."""
    items = []
    for i in range(count):
        if i % 97 == 13:
            items.append(BAD[i % len(BAD)])
        elif i % 89 == 7:
            items.append("Fe")
        else:
            items.append(f"Li{i % 13 + 1}Mn{i // 13 % 11 + 1}O{i // 143 + seed + 2}")
    return items


def sync_answers(url: str, items: list[str]) -> list[dict]:
    """What the synchronous endpoint answers for the same inputs (SDK, chunked)."""
    with Client(url, timeout=60) as client:
        return [r.model_dump() for r in client.formation_enthalpy(items)]


def job_answers(url: str, job_id: str, page_size: int = 700) -> list[dict | None]:
    with Client(url, timeout=60) as client:
        return [None if r is None else r.model_dump() for r in client.job_results(job_id, page_size=page_size)]


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)
    return value


def test_job_lifecycle_progress_and_paged_results_equal_the_sync_endpoint(redis_stack: RedisStack) -> None:
    url = redis_stack.url
    items = formulas(3000)
    with Client(url, timeout=60) as client:
        job = client.submit_job(MODEL, items)
        assert job.state == "queued" and job.durable and job.total == 3000 and job.done == 0
        active = next(m.active_version for m in client.models() if m.name == MODEL)
        assert job.version == active  # pinned at submission
        seen = [client.job(job.job_id)]
        while not seen[-1].finished:
            time.sleep(0.05)
            seen.append(client.job(job.job_id))
        finished = client.wait_job(job.job_id, timeout_s=60, progress=True)
    done = [j.done for j in seen]
    assert done == sorted(done), "progress went backwards"
    assert any(0 < d < 3000 for d in done) and "running" in {j.state for j in seen}, done
    assert finished.state == "succeeded" and finished.done == 3000 and finished.error is None
    assert finished.failed == sum(1 for item in items if item in BAD)
    assert finished.created_at <= finished.started_at <= finished.finished_at
    assert finished.model_extra["chunks_total"] == finished.model_extra["chunks_done"] == 15

    results = job_answers(url, job.job_id)
    assert results == sync_answers(url, items)
    failed = [r for r in results if r["error"]]
    assert {r["formula"] for r in failed} == set(BAD)
    assert all(r["formation_enthalpy_ev_per_atom"] is None for r in failed)

    page = httpx.get(f"{url}/v1/jobs/{job.job_id}/results", params={"offset": 2900, "limit": 500}).json()
    assert (page["offset"], len(page["results"]), page["next_offset"], page["state"]) == (2900, 100, None, "succeeded")
    page = httpx.get(f"{url}/v1/jobs/{job.job_id}/results", params={"limit": 1000}).json()
    assert page["next_offset"] == 1000 and page["model"] == MODEL and page["version"] == job.version
    with Client(url) as client:
        assert client.cancel_job(job.job_id).state == "succeeded"  # a finished job is left as it is


def test_cancel_stops_the_remaining_chunks(redis_stack: RedisStack) -> None:
    url = redis_stack.url
    with Client(url, timeout=60) as client:
        job = client.submit_job(MODEL, formulas(4000, seed=50))  # 20 chunks of 200
        wait_until(lambda: client.job(job.job_id).done > 0, 30, "the first chunk")
        cancelled = client.cancel_job(job.job_id)
        assert cancelled.state == "cancelled" and cancelled.finished_at is not None
        assert 0 < cancelled.done < 4000
        time.sleep(1.0)
        later = client.job(job.job_id)
        assert later.state == "cancelled" and later.done == cancelled.done
        results = list(client.job_results(job.job_id, page_size=5000))
    assert sum(1 for r in results if r is not None) == cancelled.done
    assert all(r is None for r in results[cancelled.done :])


def test_unknown_job_is_404_with_the_error_envelope(redis_stack: RedisStack) -> None:
    for method, path in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
        response = httpx.request(method, f"{redis_stack.url}/v1/jobs/0123456789abcdef{path}")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"
        assert "unknown job '0123456789abcdef'" in response.json()["error"]["message"]
    with Client(redis_stack.url) as client, pytest.raises(NotFoundError):
        client.job("nope")


MIB = 1024 * 1024
BAD_JOB_BODIES = [
    pytest.param({"model": "nope", "inputs": ["NaCl"]}, 404, "unknown model 'nope'", id="unknown model"),
    pytest.param({"model": MODEL, "inputs": ["NaCl"], "version": "9.9.9"}, 404, "9.9.9", id="unknown version"),
    pytest.param({"inputs": ["NaCl"]}, 422, "model: Field required", id="no model"),
    pytest.param({"model": MODEL, "inputs": []}, 422, "at least 1 item", id="empty inputs"),
    pytest.param({"model": MODEL, "inputs": "NaCl"}, 422, "inputs: Input should be a valid array", id="string"),
    pytest.param({"model": MODEL, "inputs": ["NaCl", 5]}, 422, "inputs[1]: Input should be a valid string",
                 id="non-string item"),
    pytest.param({"model": MODEL, "inputs": ["NaCl", "A" * 300]}, 422, "inputs[1]: String should have at most 256",
                 id="long item"),
    pytest.param({"model": MODEL, "inputs": ["NaCl"], "verison": "1"}, 422, "verison: Extra inputs", id="misspelt"),
    pytest.param({"model": MODEL, "inputs": ["NaCl"] * 20_001}, 413, "too many inputs: at most 20000",
                 id="too many inputs"),
    # Over the 4 MiB limit of the other routes but under this route's MATSERVE_MAX_JOB_BODY_BYTES (8 MiB here):
    # the body is read and validated (422 for the stray field), not refused for its size.
    pytest.param({"model": MODEL, "inputs": ["NaCl"], "padding": "x" * (5 * MIB)}, 422, "padding: Extra inputs",
                 id="5 MiB body is read"),
    pytest.param({"model": MODEL, "inputs": ["NaCl"], "padding": "x" * (9 * MIB)}, 413,
                 f"larger than the limit of {8 * MIB} bytes", id="9 MiB body"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "message"), BAD_JOB_BODIES)
def test_bad_job_bodies_get_a_4xx_with_a_message(
    redis_stack: RedisStack, body: dict, status: int, message: str
) -> None:
    response = httpx.post(f"{redis_stack.url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"], error


def test_bad_job_requests_of_other_kinds(redis_stack: RedisStack) -> None:
    url = redis_stack.url
    raw = httpx.post(f"{url}/v1/jobs", content=b'{"model": ', headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    text = httpx.post(f"{url}/v1/jobs", content=b"NaCl", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    assert (
        httpx.post(url + "/v1/formation-enthalpy", json={"formulas": ["NaCl"], "pad": "x" * 5 * MIB}).status_code == 413
    )
    with Client(url) as client:
        job = client.submit_job(MODEL, ["NaCl"])
    for params in ({"limit": 0}, {"limit": 10_001}, {"offset": -1}):
        response = httpx.get(f"{url}/v1/jobs/{job.job_id}/results", params=params)
        assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_input", response.text


def test_a_job_survives_an_api_server_restart(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    env = {**REDIS_STACK_ENV, "REDIS_URL": redis_server.url, "MATSERVE_JOB_CHUNK_SIZE": "100"}
    items = formulas(1500, seed=100)
    try:
        with server_process(MODELS_DIR, tmp_path / "first.log", {**env, "MATSERVE_JOB_CHUNK_PAUSE_S": "0.3"}) as first:
            with Client(first.url, timeout=60) as client:
                job = client.submit_job(MODEL, items)
                wait_until(lambda: client.job(job.job_id).done >= 200, 60, "two chunks", poll_s=0.1)
            first.kill()  # SIGKILL: no graceful shutdown, the chunk in progress is left pending
        store = RedisJobStore(redis_server.url, ttl_s=60, max_attempts=3, claim_idle_s=2)
        between = store.status(job.job_id)
        assert between is not None and between.state == "running" and between.done < 1500
        with server_process(MODELS_DIR, tmp_path / "second.log", env) as second:
            with Client(second.url, timeout=60) as client:
                finished = client.wait_job(job.job_id, timeout_s=90, poll_s=0.2, progress=False)
                assert finished.state == "succeeded" and finished.done == 1500, finished
                assert finished.version == job.version
                assert job_answers(second.url, job.job_id) == sync_answers(second.url, items)
        extra = finished.model_extra or {}
        # Every chunk ran to completion once; only one in flight at the kill may have been started twice.
        assert extra["chunks_done"] == 15 and 15 <= extra["chunk_starts"] <= 16, extra
    finally:
        redis_server.stop()


def test_a_killed_workers_chunk_is_taken_over_by_another_worker(tmp_path: Path, redis_stack: RedisStack) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    env = {"REDIS_URL": redis_server.url, "MATSERVE_ORT_THREADS": "1", "MATSERVE_JOB_CLAIM_IDLE_S": "2"}
    store = RedisJobStore(redis_server.url, ttl_s=600, max_attempts=3, claim_idle_s=2)
    listed = httpx.get(redis_stack.url + "/v1/models").json()["models"]
    version = next(m["active_version"] for m in listed if m["name"] == MODEL)
    items = formulas(3000, seed=200)
    job = store.submit(MODEL, version, items, chunk_size=500)
    client = redis_server.client()
    try:
        with running_worker(MODELS_DIR, tmp_path / "first.log", {**env, "MATSERVE_JOB_CHUNK_PAUSE_S": "0.2"}) as first:
            wait_until(lambda: store.status(job.job_id).done >= 500, 60, "a first chunk")
            # Freeze the worker until it is caught holding a chunk (started, not finished), then kill it.
            for _ in range(200):
                os.kill(first.pid, signal.SIGSTOP)
                if client.xpending(STREAM, GROUP)["pending"] > 0:
                    break
                os.kill(first.pid, signal.SIGCONT)
                time.sleep(0.03)
            else:
                pytest.fail("never caught the worker in the middle of a chunk")
            first.kill()
            first.wait()
        killed = store.status(job.job_id)
        assert killed.state == "running" and killed.done < 3000
        assert client.xpending(STREAM, GROUP)["pending"] == 1  # the chunk of the dead worker
        with running_worker(MODELS_DIR, tmp_path / "second.log", env):
            wait_until(lambda: store.status(job.job_id).finished, 90, "the job to finish", poll_s=0.2)
            # A chunk that raises fails its job, with the reason (here: a version this worker does not have).
            doomed = store.submit(MODEL, "0.0.0-gone", ["NaCl"], chunk_size=500)
            wait_until(lambda: store.status(doomed.job_id).finished, 30, "the doomed job", poll_s=0.1)
            failed = store.status(doomed.job_id)
            assert failed.state == "failed" and "chunk 0 (items 0-0) failed" in failed.error
            assert "0.0.0-gone" in failed.error
        finished = store.status(job.job_id)
        assert finished.state == "succeeded" and finished.done == 3000
        # No finished chunk was run again; the dead worker's chunk was (unless it died before starting it).
        assert finished.chunks_done == 6 and 6 <= finished.chunk_starts <= 7
        assert "took over chunk entry" in (tmp_path / "second.log").read_text()
        assert client.xpending(STREAM, GROUP)["pending"] == 0
        page = store.results(finished, 0, 3000)
        assert [{**r, "model": MODEL, "version": version} for r in page] == sync_answers(redis_stack.url, items)
    finally:
        redis_server.stop()


async def test_without_redis_jobs_run_in_memory_and_say_they_are_not_durable(server_url: str) -> None:
    items = formulas(300, seed=300)
    jobs = httpx.get(server_url + "/v1/models").json()["jobs"]
    assert jobs["backend"] == "memory" and jobs["durable"] is False and jobs["embedded_workers"] == 1
    async with AsyncClient(server_url, timeout=60) as client:
        job = await client.submit_job(MODEL, items)
        assert job.durable is False
        finished = await client.wait_job(job.job_id, timeout_s=60, poll_s=0.1, progress=False)
        results = [r async for r in client.job_results(job.job_id, page_size=128)]
        page = await client.job_results_page(job.job_id, offset=299, limit=10)
    assert finished.state == "succeeded" and finished.done == 300
    assert [r.model_dump() for r in results] == sync_answers(server_url, items)
    assert page.next_offset is None and len(page.results) == 1 and page.results[0].formula == items[299]


def test_cli_submits_waits_and_reads_a_job(server_url: str, tmp_path: Path) -> None:
    inputs = tmp_path / "formulas.txt"
    inputs.write_text("NaCl\n\nFe2O3\nXx2\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MATSERVE), "jobs", *args, "--url", server_url], capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    submitted = cli("submit", str(inputs), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "succeeded" and job["total"] == 3 and job["failed"] == 1
    results = cli("results", job["job_id"], "--json")
    rows = [json.loads(line) for line in results.stdout.splitlines()]
    assert [r["formula"] for r in rows] == ["NaCl", "Fe2O3", "Xx2"] and "Xx" in rows[2]["error"]
    table = cli("results", job["job_id"])
    assert "NaCl" in table.stdout and "error:" in table.stdout
    status = cli("status", job["job_id"])
    assert (
        status.returncode == 0 and "succeeded, 3/3 done, 1 failed" in status.stdout and "not durable" in status.stdout
    )
    missing = cli("cancel", "nope")
    assert missing.returncode == 1 and "unknown job" in missing.stderr


def test_sdk_wait_job_times_out_and_never_resubmits_a_job() -> None:
    """Client-side behaviour over a scripted transport: submission is sent once, waiting gives up on time."""
    requests: list[httpx.Request] = []
    job = {"job_id": "abc", "model": MODEL, "version": "1.0.0", "state": "running", "total": 10, "done": 4}

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST":
            return httpx.Response(503, json={"error": {"type": "unavailable", "message": "job store down"}})
        return httpx.Response(200, json=job)

    with Client("http://matserve.test", transport=httpx.MockTransport(handler), backoff=0) as client:
        with pytest.raises(ServiceUnavailableError, match="job store down"):
            client.submit_job(MODEL, ["NaCl"])
        assert [r.method for r in requests] == ["POST"]  # not retried: it could create the job twice
        started_s = time.monotonic()
        with pytest.raises(TimeoutError, match=r"still running after 0\.3 s \(4/10 done\)"):
            client.wait_job("abc", timeout_s=0.3, poll_s=0.05, progress=False)
        assert time.monotonic() - started_s < 2
        assert requests[-1].url.path == "/v1/jobs/abc"


def test_job_routes_answer_503_while_redis_is_down_and_predictions_go_on(tmp_path: Path) -> None:
    """The one place Redis going away shows: the job store. Jobs answer 503 with Retry-After, never a 500."""
    server = RedisServer(tmp_path)
    server.start()
    env = {"REDIS_URL": server.url, "MATSERVE_ORT_THREADS": "1", "MATSERVE_REDIS_RETRY_AFTER_S": "1"}
    try:
        with running_server(MODELS_DIR, tmp_path / "server.log", env) as url:
            job = httpx.post(f"{url}/v1/jobs", json={"model": "formation_enthalpy", "inputs": ["NaCl", "KCl"]})
            assert job.status_code == 202, job.text
            server.kill()
            for response in (
                httpx.post(f"{url}/v1/jobs", json={"model": "formation_enthalpy", "inputs": ["NaCl"]}, timeout=10),
                httpx.get(f"{url}/v1/jobs/{job.json()['job_id']}", timeout=10),
            ):
                assert response.status_code == 503, response.text
                assert "job store (Redis) is unreachable" in response.json()["error"]["message"]
                assert response.headers["retry-after"] == "2"
            prediction = httpx.post(f"{url}/v1/formation-enthalpy", json={"formulas": ["NaCl"]}, timeout=10)
            assert prediction.status_code == 200
            assert prediction.json()["results"][0]["formation_enthalpy_ev_per_atom"] is not None
    finally:
        server.stop()
