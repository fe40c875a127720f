"""The API image's bento: ``bentoml build -f bentos/matserve/bentofile.yaml .`` for real, offline, into a temp store.

Checks that the bento carries the registry exactly (same versions, same card files, same bytes), the serving
code and the SDK, the serving requirements, the image settings k8s/ relies on, and that the service loads
from the bento's own files alone, with every model served.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from matserve.registry import Registry

REPO = Path(__file__).resolve().parents[2]
BENTOFILE = REPO / "bentos" / "matserve" / "bentofile.yaml"
BIN = Path(sys.executable).parent
BENTO_PATH_IN_IMAGE = "/home/bentoml/bento"  # BENTO_PATH of the images bentoml containerize makes

pytestmark = pytest.mark.slow


def offline_prefix() -> list[str]:
    """``unshare -n --`` when this machine can run a command with no network at all (root on Linux), else []."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "--", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", "--"]
    return []


def requirement(line: str) -> tuple[str, frozenset[str], str] | None:
    """A requirements.txt line as (normalised name, extras, specifier); None for blanks and comments."""
    line = line.split("#")[0].strip()
    if not line:
        return None
    parsed = Requirement(line)
    return canonicalize_name(parsed.name), frozenset(parsed.extras), str(parsed.specifier)


def bento_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATSERVE_", "BENTOML_"))}
    env.pop("REDIS_URL", None)
    env.pop("TRITON_URL", None)
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the bento once (with no network when the machine allows it); its tag, folder and store."""
    home = tmp_path_factory.mktemp("bentoml-home")
    prefix = offline_prefix()
    done = subprocess.run(
        [*prefix, str(BIN / "bentoml"), "build", "-f", str(BENTOFILE.relative_to(REPO)), "."],
        cwd=REPO,
        env=bento_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"bentoml build failed (offline={bool(prefix)}):\n{done.stdout}\n{done.stderr}"
    match = re.search(r'Successfully built Bento\(tag="(matserve:\w+)"\)', done.stdout + done.stderr)
    assert match, done.stdout
    tag = match.group(1)
    path = home / "bentos" / "matserve" / tag.split(":")[1]
    assert (path / "bento.yaml").is_file()
    return {"tag": tag, "path": path, "home": home, "offline": bool(prefix)}


def test_bento_yaml_names_the_service_and_image_settings(bento: dict[str, Any]) -> None:
    info = yaml.safe_load((bento["path"] / "bento.yaml").read_text())
    assert info["service"] == "matserve.service:MatServe"
    assert info["name"] == "matserve" and info["entry_service"] == "matserve"
    assert info["image"]["python_version"] == "3.11"
    envs = {e["name"]: e["value"] for e in info["envs"]}
    # The image's registry and import path are the bento's own src/ folders.
    assert envs["MATSERVE_MODELS_DIR"] == f"{BENTO_PATH_IN_IMAGE}/src/models"
    python_path = envs["PYTHONPATH"].split(":")
    assert python_path == [f"{BENTO_PATH_IN_IMAGE}/src/serving", f"{BENTO_PATH_IN_IMAGE}/src/clients"]
    for entry in python_path:
        assert (bento["path"] / Path(entry).relative_to(BENTO_PATH_IN_IMAGE)).is_dir(), entry
    assert not {"REDIS_URL", "TRITON_URL", "MATSERVE_ADMIN_TOKEN"} & set(envs), "deployment settings belong to k8s/"
    dockerfile = (bento["path"] / "env" / "docker" / "Dockerfile").read_text()
    assert "EXPOSE 3000" in dockerfile  # the port k8s/base/api.yaml probes
    assert f"ARG BENTO_PATH={BENTO_PATH_IN_IMAGE}\n" in dockerfile
    for name in ("MATSERVE_MODELS_DIR", "PYTHONPATH"):
        assert f"ARG {name}={envs[name]}\n" in dockerfile and f"ENV {name}=${name}\n" in dockerfile
    # Every serving pin is what the image installs (bentoml writes extras sorted: compare parsed requirements).
    wanted = {requirement(line) for line in (REPO / "requirements" / "serve.txt").read_text().splitlines()} - {None}
    installed = (bento["path"] / "env" / "python" / "requirements.txt").read_text().splitlines()
    installed = {requirement(line) for line in installed} - {None}
    assert wanted <= installed, f"missing from the image: {sorted(wanted - installed)}"


def test_bento_carries_the_registry_exactly(bento: dict[str, Any]) -> None:
    repo_models, bento_models = REPO / "models", bento["path"] / "src" / "models"
    ours, theirs = Registry(repo_models), Registry(bento_models)
    assert theirs.names() == ours.names() and ours.names()
    assert not theirs.refused
    for name in ours.names():
        assert theirs.versions(name) == ours.versions(name)
        assert theirs.active_version(name) == ours.active_version(name)
        for version in ours.versions(name):
            a, b = ours.get(name, version), theirs.get(name, version)
            assert (b.path / "card.json").read_bytes() == (a.path / "card.json").read_bytes()
            assert b.card["files"] == a.card["files"]  # and Registry verified every sha256 in the bento
    # Nothing more, nothing less: every file of the registry is there and the bento adds none.
    listing = {
        str(p.relative_to(repo_models))
        for p in repo_models.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("tmp")
    }
    assert {str(p.relative_to(bento_models)) for p in bento_models.rglob("*") if p.is_file()} == listing


def test_bento_carries_serving_code_and_sdk(bento: dict[str, Any]) -> None:
    src = bento["path"] / "src"
    for package, root in (
        ("matserve", REPO / "serving" / "matserve"),
        ("matserve_client", REPO / "clients" / "matserve_client"),
    ):
        shipped = {p.relative_to(root) for p in root.rglob("*.py") if "__pycache__" not in p.parts}
        parent = "serving" if package == "matserve" else "clients"
        assert {p.relative_to(src / parent / package) for p in (src / parent / package).rglob("*.py")} == shipped
    assert (src / "requirements" / "serve.txt").read_bytes() == (REPO / "requirements" / "serve.txt").read_bytes()
    assert not list(src.rglob("__pycache__")) and not list(src.rglob("*.pyc"))


LOAD_SCRIPT = """
import json, os, sys
import bentoml

bento = bentoml.get(sys.argv[1])
service = bentoml.load(sys.argv[1])
import matserve, matserve_client
instance = service.inner()
print(json.dumps({
    "tag": str(bento.tag),
    "service": bento.info.service,
    "name": service.name,
    "matserve": matserve.__file__,
    "matserve_client": matserve_client.__file__,
    "models_dir": str(instance.context.registry.root),
    "served": sorted(instance.context.models),
    "ready": bool(instance.__is_ready__()),
}))
sys.stdout.flush()
os._exit(0)  # no waiting for background threads the service may have started
"""


def test_service_loads_from_the_bento_alone(bento: dict[str, Any]) -> None:
    """Import and construct the service the way the image does: the bento's src/ on PYTHONPATH, its registry."""
    path: Path = bento["path"]
    env = bento_env(bento["home"])
    env.update(
        PYTHONPATH=f"{path}/src/serving{os.pathsep}{path}/src/clients",
        MATSERVE_MODELS_DIR=str(path / "src" / "models"),
        MATSERVE_EMBEDDED_WORKERS="0",
        MATSERVE_ORT_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",  # leave the bento's src/ as built
    )
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, bento["tag"]],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["tag"] == bento["tag"] and loaded["service"] == "matserve.service:MatServe"
    assert loaded["name"] == "matserve"
    assert Path(loaded["matserve"]).is_relative_to(path / "src" / "serving"), loaded["matserve"]
    assert Path(loaded["matserve_client"]).is_relative_to(path / "src" / "clients"), loaded["matserve_client"]
    assert Path(loaded["models_dir"]) == path / "src" / "models"
    assert loaded["served"] == Registry(REPO / "models").names()
    assert loaded["ready"]


def _image_env(bento: dict[str, Any]) -> dict[str, str]:
    """The environment of a container of this bento's image, with BENTO_PATH mapped to the built bento."""
    path: Path = bento["path"]
    env = bento_env(bento["home"])
    env.update(
        BENTO_PATH=str(path),
        PYTHONPATH=f"{path}/src/serving{os.pathsep}{path}/src/clients",
        MATSERVE_MODELS_DIR=str(path / "src" / "models"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def test_the_commands_k8s_gives_the_image_run_from_the_bento(bento: dict[str, Any], tmp_path: Path) -> None:
    """The gpu overlay's init container script and the worker command, run against the bento's files."""
    from tests.unit.test_k8s_manifests import render

    objects = render("gpu")
    pods = {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"}
    (init,) = pods["matserve-triton"]["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert init["args"][:2] == ["sh", "-c"]
    script = init["args"][2]
    for name, mount in mounts.items():  # the pod's volumes become temp folders
        (tmp_path / name).mkdir()
        script = script.replace(mount, str(tmp_path / name))
    done = subprocess.run(["sh", "-c", script], env=_image_env(bento), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    repository = json.loads((tmp_path / "model-repository" / "matserve_repository.json").read_text())
    registry = Registry(REPO / "models")
    assert repository["target"] == "gpu"
    assert sorted(repository["models"]) == registry.names()
    for name, entry in repository["models"].items():
        assert sorted(entry["versions"].values()) == sorted(registry.versions(name))
    assert (
        tmp_path / "matserve-src" / "serving" / "matserve" / "triton" / "python_models" / "domain_model.py"
    ).is_file()

    (worker,) = pods["matserve-worker"]["containers"]
    done = subprocess.run(
        [*worker["args"], "--help"], env=_image_env(bento), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
