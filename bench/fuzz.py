"""A long schemathesis fuzz of a fresh server (outside CI): ``make fuzz`` or ``python bench/fuzz.py -n 250``.

Starts a real ``matserve serve`` (rate limiting off, EBSD refinement preloaded) on the committed registry, runs
the same checks as ``tests/test_fuzz_openapi.py`` with a random seed (printed) and ``-n`` examples per operation
and phase, and prints schemathesis' summary: generated requests, passed, failures. Exit code: schemathesis'.
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
from tests.test_fuzz_openapi import run_schemathesis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--max-examples", type=int, default=250, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"MATSERVE_ORT_THREADS": "1", "MATSERVE_EBSD_PRELOAD": "1", "NUMBA_CACHE_DIR": f"{tmp}/numba"}
        with running_server(Settings().models_dir, Path(tmp) / "server.log", env) as url:
            code, output = run_schemathesis(url, args.max_examples, seed, Path(tmp))
        server_log = (Path(tmp) / "server.log").read_text(errors="replace")
    summary = output[output.find("SUMMARY") - 40 :] if "SUMMARY" in output else output[-4000:]
    print(summary)
    counted = re.search(r"(\d+) generated, (\d+) passed", output)
    print(f"seed {seed}; -n {args.max_examples}; "
          f"{counted.group(0) if counted else 'no count'}; exit code {code}; "
          f"server log lines with 'Traceback': {server_log.count('Traceback')}")  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
