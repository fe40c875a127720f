"""Per-client rate limiting against real servers: one with in-memory buckets, two sharing a real redis-server.

Each test sends from its own loopback address (127.0.0.N: Linux routes all of 127/8 to lo), so every test
starts with full buckets whatever ran before it. The three servers start in parallel to keep the module short.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from matserve.devserver import server_process
from tests.conftest import MODELS_DIR
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

BODY = {"formulas": ["NaCl"]}
FORMATION = "/v1/formation-enthalpy"
COMMON_ENV = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_RATE_LIMIT_PER_MINUTE": "30", "MATSERVE_RATE_LIMIT_BURST": "5"}
MEMORY_ENV = {**COMMON_ENV, "MATSERVE_API_KEYS": "test-key-1:120:10,unlimited-key:0"}
REDIS_ENV = {**COMMON_ENV, "MATSERVE_RATE_LIMIT_BURST": "6", "MATSERVE_CACHE": "0", "MATSERVE_EMBEDDED_WORKERS": "0",
             "MATSERVE_REDIS_RETRY_AFTER_S": "1"}  # fmt: skip


@dataclass
class Servers:
    memory: str
    shared_a: str
    shared_b: str
    shared_a_log: Path
    redis: RedisServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    workdir = tmp_path_factory.mktemp("rate-limit")
    redis_server = RedisServer(workdir)
    redis_server.start()
    shared_env = {**REDIS_ENV, "REDIS_URL": redis_server.url}
    plans = [("memory", MEMORY_ENV), ("shared-a", shared_env), ("shared-b", shared_env)]
    with ExitStack() as stack:
        stack.callback(redis_server.stop)
        with ThreadPoolExecutor(len(plans)) as pool:
            started = [pool.submit(stack.enter_context, server_process(MODELS_DIR, workdir / f"{name}.log", env))
                       for name, env in plans]  # fmt: skip
            memory, shared_a, shared_b = (future.result() for future in started)
        yield Servers(memory.url, shared_a.url, shared_b.url, workdir / "shared-a.log", redis_server)


def client(url: str, address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (its own bucket on the server)."""
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=30)


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` on ``url``'s ``/metrics`` whose label text contains ``labels``."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def assert_rate_limited(response: httpx.Response, per_minute: int, counted_by: str) -> int:
    """Check a 429: envelope, message and an integer ``Retry-After``; returns the seconds."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limited"
    assert f"limit {per_minute} requests per minute per {counted_by}" in error["message"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert re.search(rf"retry after {retry_after} s", error["message"])
    return retry_after


def test_a_client_address_gets_its_burst_then_429_then_is_served_again(servers: Servers) -> None:
    with client(servers.memory, "127.0.0.11") as http:
        codes = [http.post(FORMATION, json=BODY).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5  # the burst
        assert codes[5:].count(429) >= 2, codes  # refill is 0.5 token/s: at most one more may slip in
        refused = http.post(FORMATION, json=BODY)
        retry_after = assert_rate_limited(refused, 30, "client address")
        assert "an API key, sent as X-API-Key, has its own limit" in refused.json()["error"]["message"]
        assert retry_after <= 2  # one token at 0.5 token/s
        time.sleep(retry_after + 0.1)
        assert http.post(FORMATION, json=BODY).status_code == 200
    with client(servers.memory, "127.0.0.12") as other:  # another address is not affected
        assert other.post(FORMATION, json=BODY).status_code == 200


def test_an_api_key_has_its_own_limit_and_an_unknown_key_counts_by_address(servers: Servers) -> None:
    key = {"X-API-Key": "test-key-1"}
    with client(servers.memory, "127.0.0.13") as http:
        codes = [http.post(FORMATION, json=BODY, headers=key).status_code for _ in range(10)]
        assert codes == [200] * 10  # the key's burst of 10, twice the anonymous one
        bearer = http.post(FORMATION, json=BODY, headers={"Authorization": "Bearer test-key-1"})
        assert_rate_limited(bearer, 120, "API key")  # the same key's bucket, sent the other way
        assert http.post(FORMATION, json=BODY).status_code == 200  # the address's own bucket is untouched

        unknown = [http.post(FORMATION, json=BODY, headers={"X-API-Key": "no-such-key"}) for _ in range(5)]
        assert [r.status_code for r in unknown[:4]] == [200] * 4  # 4 more from the address's bucket of 5
        assert_rate_limited(unknown[4], 30, "client address")
        assert "X-API-Key sent is not a known key" in unknown[4].json()["error"]["message"]

        unlimited = {"X-API-Key": "unlimited-key"}  # a key with limit 0 is not limited
        assert all(http.post(FORMATION, json=BODY, headers=unlimited).status_code == 200 for _ in range(20))


def test_exempt_routes_are_never_limited(servers: Servers) -> None:
    with client(servers.memory, "127.0.0.14") as http:
        job = http.post("/v1/jobs", json={"model": "formation_enthalpy", "inputs": ["NaCl"]})
        assert job.status_code == 202, job.text
        while http.post(FORMATION, json=BODY).status_code != 429:  # empty the bucket
            pass
        for _ in range(3):
            for path in ("/v1/models", "/v1/docs", "/v1/openapi.json", "/readyz", "/livez", "/metrics",
                         job.json()["status_url"], job.json()["results_url"]):  # fmt: skip
                response = http.get(path)
                assert response.status_code == 200, (path, response.status_code, response.text[:200])
            admin = http.post("/v1/admin/registry/reload")  # no admin token configured: 403, never 429
            assert admin.status_code == 403
        assert http.delete(job.json()["status_url"]).status_code != 429
        assert http.post(FORMATION, json=BODY).status_code == 429  # still empty: the GETs took nothing


def test_a_job_counts_as_one_request_however_many_inputs(servers: Servers) -> None:
    inputs = ["NaCl", "Fe2O3", "MgO", "TiO2"] * 250  # 1000 items
    with client(servers.memory, "127.0.0.15") as http:
        start_s = time.monotonic()
        job = http.post("/v1/jobs", json={"model": "formation_enthalpy", "inputs": inputs})
        assert job.status_code == 202, job.text
        codes = [http.post(FORMATION, json=BODY).status_code for _ in range(5)]
        assert codes[:4] == [200] * 4  # 1 job + 4 requests = the burst of 5
        if time.monotonic() - start_s < 1.9:  # no token refilled yet (0.5 token/s)
            assert codes[4] == 429
        while http.post("/v1/jobs", json={"model": "formation_enthalpy", "inputs": ["NaCl"]}).status_code != 429:
            pass
        refused = http.post("/v1/jobs", json={"model": "formation_enthalpy", "inputs": ["NaCl"]})
        assert_rate_limited(refused, 30, "client address")


def test_refusals_are_counted_in_prometheus(servers: Servers) -> None:
    labels = 'by="address",route="/v1/formation-enthalpy"'
    before = metric(servers.memory, "matserve_rate_limited_total", labels)
    with client(servers.memory, "127.0.0.16") as http:
        codes = [http.post(FORMATION, json=BODY).status_code for _ in range(9)]
    refused = codes.count(429)
    assert refused >= 3
    assert metric(servers.memory, "matserve_rate_limited_total", labels) == before + refused


def test_two_servers_sharing_redis_share_the_bucket(servers: Servers) -> None:
    with client(servers.shared_a, "127.0.0.21") as a, client(servers.shared_b, "127.0.0.21") as b:
        codes = [(a if i % 2 == 0 else b).post(FORMATION, json=BODY).status_code for i in range(12)]
    assert codes[:6] == [200] * 6  # one bucket of 6 for both servers (separate buckets would serve 12)
    assert codes[6:].count(429) >= 5, codes
    assert 429 in codes[6::2] and 429 in codes[7::2]  # refused by both servers
    keys = servers.redis.client().keys("matserve:ratelimit:v1:*")
    assert b"matserve:ratelimit:v1:ip:127.0.0.21" in keys
    assert 0 < servers.redis.client().pttl("matserve:ratelimit:v1:ip:127.0.0.21") <= 13_000  # refill time + 1 s


def test_a_dead_redis_fails_open_to_per_process_buckets(servers: Servers) -> None:
    fallback_before = metric(servers.shared_a, "matserve_rate_limit_fallback_total")
    servers.redis.kill()
    try:
        with client(servers.shared_a, "127.0.0.22") as http:
            codes = [http.post(FORMATION, json=BODY).status_code for _ in range(8)]
        assert codes[:6] == [200] * 6, codes  # served, no 5xx: the process's own bucket of 6 decides
        assert set(codes) <= {200, 429}
        assert metric(servers.shared_a, "matserve_rate_limit_fallback_total") >= fallback_before + 8
        assert "Redis rate limiter at" in servers.shared_a_log.read_text()
    finally:
        servers.redis.start()
    deadline = time.monotonic() + 10  # the breaker probes Redis again after MATSERVE_REDIS_RETRY_AFTER_S (1 s)
    with client(servers.shared_a, "127.0.0.23") as http:
        while not servers.redis.client().exists("matserve:ratelimit:v1:ip:127.0.0.23"):
            assert time.monotonic() < deadline, "the rate limiter did not go back to Redis"
            assert http.post(FORMATION, json=BODY).status_code == 200
            time.sleep(0.3)


def test_the_sdk_waits_out_a_429_and_says_so_when_retries_run_out(servers: Servers) -> None:
    """The Python SDK retries a 429 after the server's Retry-After (a refused request never ran, so even a job
    submission is safe to resend); with no retries left it raises RateLimitedError carrying Retry-After."""
    from matserve_client import Client, RateLimitedError

    def sdk(retries: int) -> Client:
        transport = httpx.HTTPTransport(local_address="127.0.0.19")
        return Client(servers.memory, retries=retries, backoff=0, transport=transport)

    with sdk(retries=0) as impatient:
        for _ in range(5):  # the burst
            impatient.formation_enthalpy(["NaCl"])
        with pytest.raises(RateLimitedError) as refused:
            impatient.formation_enthalpy(["NaCl"])
        assert refused.value.status_code == 429 and refused.value.error_type == "rate_limited"
        assert 1 <= refused.value.retry_after_s <= 2
    with client(servers.memory, "127.0.0.19") as http, sdk(retries=3) as patient:
        while http.post(FORMATION, json=BODY).status_code != 429:  # empty the bucket again, whatever time passed
            pass
        started = time.monotonic()
        job = patient.submit_job("formation_enthalpy", ["NaCl", "KCl"])  # waits for a token, then submits once
        assert time.monotonic() - started >= 0.9
        assert job.total == 2
