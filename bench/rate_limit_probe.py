"""The issue-18 probe of rate limiting (outside CI): 2,000 formation requests from one client, default settings.

Starts a real ``matserve serve`` with the default limit (``MATSERVE_RATE_LIMIT_PER_MINUTE`` 600, burst 600; the
devserver turns it off unless told, so it is set here), sends 2,000 ``POST /v1/formation-enthalpy`` from one
address on 8 threads and prints how many were served and how many got 429 (with ``Retry-After``), and the time.
A token bucket of 600 refilling at 10/s should serve about 600 + 10 x seconds.

Run: ``PYTHONPATH=. .venv/bin/python bench/rate_limit_probe.py``.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from matserve.devserver import running_server
from matserve.settings import Settings

REQUESTS = 2000


def main() -> None:
    env = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_RATE_LIMIT_PER_MINUTE": "600"}
    with tempfile.TemporaryDirectory() as tmp, running_server(Settings().models_dir, Path(tmp) / "log", env) as url:
        with httpx.Client(base_url=url, timeout=60) as client:

            def one(_: int) -> tuple[int, bool]:
                response = client.post("/v1/formation-enthalpy", json={"formulas": ["NaCl"]})
                return response.status_code, "retry-after" in response.headers

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(one, range(REQUESTS)))
            seconds = time.perf_counter() - started
    statuses = Counter(status for status, _ in answers)
    with_retry_after = sum(1 for status, header in answers if status == 429 and header)
    print(f"{REQUESTS} requests in {seconds:.1f} s: {statuses[200]} served, {statuses[429]} limited "
          f"({with_retry_after} with Retry-After), other {REQUESTS - statuses[200] - statuses[429]}; "
          f"a 600/min bucket of 600 predicts about {600 + 10 * seconds:.0f} served")  # fmt: skip


if __name__ == "__main__":
    main()
