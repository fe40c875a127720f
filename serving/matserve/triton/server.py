"""Run a model repository on the real ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel.

The wheel needs numpy < 2, so it lives in its own virtualenv (``.venv-triton``, made by ``make triton``
or ``make test`` from ``requirements/triton.txt``; override with ``MATSERVE_TRITON_VENV``). That wheel's
Triton has the python backend only, hence ``--target cpu`` repositories here; the GPU repository is for
the official Triton container.

Pitfalls handled here (see shared/notes/stack.md):

* the python-backend stub loads ``libpython3.11.so`` by name: the venv interpreter's ``LIBDIR`` goes first
  in ``LD_LIBRARY_PATH``, then the wheel's bundled libraries;
* the stub must sit in ``backends/python/``: the wheel's backends are copied to a work folder with the
  stub for this Python version;
* busy ports make tritonserver exit at once: :func:`running_triton` picks free ones;
* the python backend's shared-memory regions get a per-server name prefix (the default one is shared by every
  tritonserver on the host, so a second server broke the first's python models);
* SIGINT and SIGTERM are forwarded to tritonserver for a clean shutdown (a process started in the
  background from a non-interactive shell would otherwise ignore SIGINT).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from matserve.devserver import free_port, wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVING_DIR = REPO_ROOT / "serving"
CLIENTS_DIR = REPO_ROOT / "clients"
"""The SDK package: the HTTP API's modules the domain models reuse import its wire schemas."""
PY_VERSION = "3.11"


def triton_venv() -> Path:
    """The virtualenv holding ``nvidia-pytriton`` (``MATSERVE_TRITON_VENV``, default ``<repo>/.venv-triton``)."""
    return Path(os.environ.get("MATSERVE_TRITON_VENV", REPO_ROOT / ".venv-triton"))


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the wheel's Triton are.

    Attributes
    ----------
    binary : Path
        The ``tritonserver`` executable.
    backends : Path
        The wheel's ``backends/`` folder (python backend only).
    stub : Path
        ``triton_python_backend_stub`` for this Python version.
    libs : Path
        The wheel's bundled shared libraries.
    site_packages : Path
        The venv's site-packages (numpy < 2, onnxruntime, pymatgen for the python models).
    libpython_dir : Path
        Folder of the venv interpreter's ``libpython3.11.so``.
    """

    binary: Path
    backends: Path
    stub: Path
    libs: Path
    site_packages: Path
    libpython_dir: Path


def find_triton(venv: Path | None = None) -> TritonInstall:
    """Locate the wheel's Triton in ``venv``; raises FileNotFoundError saying how to install it."""
    venv = venv or triton_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no Triton virtualenv at {venv}: run `make triton-env` (or set MATSERVE_TRITON_VENV)")
    site_packages = venv / "lib" / f"python{PY_VERSION}" / "site-packages"
    root = site_packages / "pytriton" / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: install requirements/triton.txt into {venv}")
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return TritonInstall(
        binary=binary,
        backends=root / "backends",
        stub=root / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub",
        libs=site_packages / "nvidia_pytriton.libs",
        site_packages=site_packages,
        libpython_dir=Path(libdir),
    )


def triton_command(
    install: TritonInstall,
    repository: Path,
    work_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str = "127.0.0.1",
    extra_env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment (``extra_env`` added to this process's); prepares
    ``work_dir/backends`` with the stub."""
    backends = work_dir / "backends"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        shutil.copytree(install.backends, backends, dirs_exist_ok=True)
        shutil.copy2(install.stub, backends / "python" / "triton_python_backend_stub")
    env = {**os.environ, **(extra_env or {})}
    env["LD_LIBRARY_PATH"] = ":".join(
        [str(install.libpython_dir), str(install.libs)]
        + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    )
    env["PYTHONPATH"] = f"{install.site_packages}:{SERVING_DIR}:{CLIENTS_DIR}"
    env["PATH"] = f"{install.site_packages.parents[2] / 'bin'}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [
        str(install.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        # Python-backend stubs talk to the server through shared memory regions named with this prefix; the
        # default prefix is the same for every tritonserver, so a second one on the host would clobber the first's.
        f"--backend-config=python,shm-region-prefix-name=matserve_{os.getpid()}_{http_port}_",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--log-verbose=0",
    ]
    return command, env


@dataclass(frozen=True)
class TritonEndpoints:
    """Where a running Triton answers."""

    http_url: str
    grpc_target: str
    metrics_url: str
    process: subprocess.Popen


def stop(process: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM (Triton unloads models and exits), then SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextmanager
def running_triton(
    repository: Path,
    log_path: Path,
    ports: tuple[int, int, int] | None = None,
    ready_timeout_s: float = 120,
    env: dict[str, str] | None = None,
) -> Iterator[TritonEndpoints]:
    """Run tritonserver on ``repository`` (free loopback ports unless given) until the block ends; ``env`` adds
    environment variables (e.g. ``NUMBA_CACHE_DIR``)."""
    install = find_triton()
    http_port, grpc_port, metrics_port = ports or (free_port(), free_port(), free_port())
    with tempfile.TemporaryDirectory(prefix="matserve-triton-") as work:
        command, environment = triton_command(
            install, Path(repository), Path(work), http_port, grpc_port, metrics_port, extra_env=env
        )
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )
        endpoints = TritonEndpoints(
            http_url=f"http://127.0.0.1:{http_port}",
            grpc_target=f"127.0.0.1:{grpc_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            process=process,
        )
        try:
            wait_until_ready(f"{endpoints.http_url}/v2/health/ready", process, ready_timeout_s, log_path)
            yield endpoints
        finally:
            stop(process)


def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, host: str = "127.0.0.1") -> int:
    """Run tritonserver in the foreground until SIGINT/SIGTERM, which are forwarded for a clean stop."""
    install = find_triton()
    with tempfile.TemporaryDirectory(prefix="matserve-triton-") as work:
        command, env = triton_command(install, repository, Path(work), http_port, grpc_port, metrics_port, host)
        process = subprocess.Popen(command, env=env)

        stopping = False

        def forward(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        try:
            local = "127.0.0.1" if host == "0.0.0.0" else host
            wait_until_ready(f"http://{local}:{http_port}/v2/health/ready", process, timeout_s=300)
        except RuntimeError as error:
            if stopping:  # asked to stop before readiness was seen: a clean stop, not a failure
                return stop(process)
            print(f"error: {error}", file=sys.stderr)
            stop(process)
            return 1
        print(
            f"Triton ready: HTTP http://{host}:{http_port}  gRPC {host}:{grpc_port}  "
            f"metrics http://{host}:{metrics_port}/metrics  (repository {repository})",
            flush=True,
        )
        return process.wait()
