"""A long schemathesis fuzz of a fresh server (outside CI): ``make fuzz`` or ``python bench/fuzz.py``.

Starts a real ``matserve serve`` (rate limiting off, EBSD refinement preloaded) on the committed registry and runs
the same checks as ``tests/integration/test_fuzz_openapi.py`` (no 5xx; status, content type, body and headers as documented)
with random seeds (printed), ``-n`` examples per operation and phase, run after run until at least
``--min-requests`` requests were generated. Prints each run's summary and the total; exit code 1 if any run failed.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from pathlib import Path

from matserve.devserver import running_server
from matserve.settings import Settings
from tests.integration.test_fuzz_openapi import run_schemathesis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--max-examples", type=int, default=250, help="examples per operation and phase")
    parser.add_argument("--min-requests", type=int, default=10_000, help="run with new seeds until this many")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random); then +1 per run")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    total = passed = failed_runs = 0
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_EBSD_PRELOAD": "1", "NUMBA_CACHE_DIR": f"{tmp}/numba"}
        with running_server(Settings().models_dir, Path(tmp) / "server.log", env) as url:
            while total < args.min_requests:
                code, output = run_schemathesis(url, args.max_examples, seed, Path(tmp))
                counted = re.search(r"(\d+) generated, (\d+) passed", output)
                generated, ok = (int(counted.group(1)), int(counted.group(2))) if counted else (0, 0)
                total, passed, failed_runs = total + generated, passed + ok, failed_runs + (code != 0)
                if code != 0:
                    print(output[-6000:])
                print(f"seed {seed}: {generated} generated, {ok} passed, exit code {code}", flush=True)
                if generated == 0:
                    break
                seed += 1
        server_log = (Path(tmp) / "server.log").read_text(errors="replace")
    print(f"total: {total} requests generated, {passed} passed, {failed_runs} failed run(s); "
          f"server log lines with 'Traceback': {server_log.count('Traceback')}")  # fmt: skip
    return 1 if failed_runs or passed != total else 0


if __name__ == "__main__":
    sys.exit(main())
