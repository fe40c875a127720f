"""A 10^6-formula batch job end to end: submit, run, page through results (Redis, API server, one worker).

Starts a real ``redis-server`` and ``matserve serve`` (one embedded worker thread) plus one standalone
``matserve worker`` process, submits one million distinct formulas in one ``POST /v1/jobs``, waits for
the job, then reads every result page. Prints and writes ``bench/results/million_job.json``.

Run: ``.venv/bin/python bench/bench_million_job.py`` (needs redis-server; about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from matserve.devserver import free_port, running_server, running_worker
from matserve.settings import Settings
from matserve_client import Client

RESULTS = Path(__file__).resolve().parent / "results" / "million_job.json"
ELEMENTS = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "Sc", "Y", "La", "Ti", "Zr", "V", "Nb",
            "Cr", "Mo", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]  # fmt: skip
ANIONS = ["O", "S", "Se", "N", "P", "F", "Cl", "Br"]


def formulas(n: int) -> list[str]:
    """``n`` distinct ternary formulas (deterministic)."""
    out = []
    for (a, b), c, i, j, k in itertools.product(
        itertools.permutations(ELEMENTS, 2), ANIONS, range(1, 6), range(1, 6), range(1, 10)
    ):
        out.append(f"{a}{i}{b}{j}{c}{k}")
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} formulas available")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    items = formulas(args.items)
    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "MATSERVE_MAX_JOB_BODY_BYTES": str(64 * 1024 * 1024)}
        try:
            time.sleep(0.5)
            with (
                running_server(settings.models_dir, tmp / "api.log", env) as url,
                running_worker(settings.models_dir, tmp / "worker.log", env),
                Client(url, timeout=300) as client,
            ):
                started = time.perf_counter()
                job = client.submit_job("formation_enthalpy", items)
                submitted_s = time.perf_counter() - started
                done = client.wait_job(job.job_id, timeout_s=3600, progress=False)
                finished_s = time.perf_counter() - started
                read = ok = 0
                for result in client.job_results(job.job_id, page_size=10_000):
                    read += 1
                    ok += result is not None and result.error is None
                read_s = time.perf_counter() - started - finished_s
        finally:
            redis.terminate()
            redis.wait()
    report = {
        "items": len(items),
        "state": done.state,
        "failed_items": done.failed,
        "results_read": read,
        "results_ok": ok,
        "submit_s": submitted_s,
        "submit_to_done_s": finished_s,
        "formulas_per_s": len(items) / finished_s,
        "read_all_results_s": read_s,
        "workers": "1 embedded thread + 1 matserve worker process, 2 cores",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
