"""The model registry: versioned folders ``models/<name>/<version>/`` holding ONNX graphs and a card.

A version folder is valid when its ``card.json`` parses, names itself correctly,
lists every file it ships with a sha256, and every listed file exists with that
sha256. Anything else is refused with one clear log line; other models and
versions keep serving.

The active version of a model is the one named in ``models/<name>/ACTIVE`` when
that file exists (written atomically by :meth:`Registry.set_active`), otherwise
the highest version folder. When that version is refused (tampered, incomplete),
the model is *degraded*: it is never silently replaced by another version.
Requests that do not pin a version get :class:`ModelDegraded` (the service answers
503 with the reason) until an operator activates a valid version or repairs the
folder and reloads; :attr:`Registry.degraded` says which models and why.

Messages name version folders as ``<name>/<version>`` relative to the registry
root, never by their absolute path (they reach API clients).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("matserve.registry")

CARD_FILE = "card.json"
ACTIVE_FILE = "ACTIVE"
REQUIRED_CARD_FIELDS = (
    "name", "version", "task", "inputs", "outputs", "files", "data", "split", "metrics", "created", "code_commit",
)  # fmt: skip


class RegistryError(Exception):
    """A version folder that cannot be served (missing, incomplete or tampered)."""


class ModelDegraded(RegistryError):
    """The model's active version was refused; no other version stands in for it."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_key(version: str) -> tuple:
    """Sort key for versions like ``1.10.0`` (numeric parts compare as numbers)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split("."))


def write_card(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``card.json`` into a version folder, recording the sha256 of every other file in it.

    Parameters
    ----------
    folder : Path
        ``models/<name>/<version>``; must already hold the model files.
    card : dict
        Card content; ``files`` is filled in here.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CARD_FILE)
    card = {**card, "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}}
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


@dataclass(frozen=True)
class ModelVersion:
    """One verified version folder.

    Attributes
    ----------
    name, version : str
        Model name (folder under ``models/``) and version (folder under it).
    path : Path
        The version folder.
    card : dict
        The parsed ``card.json``.
    """

    name: str
    version: str
    path: Path
    card: dict[str, Any] = field(repr=False)

    def file(self, key: str = "model.onnx") -> Path:
        """Path of a file the card lists."""
        return self.path / key

    def tensor_specs(self, kind: str) -> list[dict[str, Any]]:
        """The graph's ``inputs`` or ``outputs`` as ``[{"name", "dtype", "shape", ...}]`` (see :func:`tensor_specs`)."""
        return tensor_specs(self, kind)

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows for this version."""
        keys = ("task", "description", "created", "code_commit", "inputs", "outputs", "metrics", "baselines")
        return {"name": self.name, "version": self.version, **{k: self.card[k] for k in keys if k in self.card}}


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
                "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
                "tensor(string)": "bytes"}  # fmt: skip


def tensor_specs(model: ModelVersion, kind: str) -> list[dict[str, Any]]:
    """A card's ``inputs`` or ``outputs`` as a list of ``{"name", "dtype", "shape", ...}`` (batch axis ``-1``).

    Cards give them either as that list, or as a mapping of names to (possibly empty) specs, e.g.
    ``{"images": {"shape": [null, 128, 128, 2], "dtype": "float32"}, "class_activation_maps": {}}``; then the
    order is the mapping's, and a missing ``dtype`` or ``shape`` is read from ``model.onnx`` (with ONNX Runtime,
    which every serving environment has). Unknown dimensions (``null``, symbolic) become ``-1``.

    Parameters
    ----------
    model : ModelVersion
    kind : {"inputs", "outputs"}
    """
    if kind not in ("inputs", "outputs"):
        raise ValueError(f"kind is 'inputs' or 'outputs', not {kind!r}")
    declared = model.card[kind]
    if isinstance(declared, list):
        return [dict(spec) for spec in declared]
    specs = []
    graph: dict[str, dict[str, Any]] | None = None
    for name, spec in dict(declared).items():
        spec = dict(spec or {})
        if "dtype" not in spec or "shape" not in spec:
            graph = graph if graph is not None else _graph_specs(str(model.file("model.onnx")), kind)
            if name not in graph:
                raise RegistryError(
                    f"{model.name}/{model.version}: card {kind} name {name!r}, which model.onnx does not have"
                )
            spec = {**graph[name], **spec}
        shape = [-1 if d is None else int(d) for d in spec["shape"]]
        specs.append({**spec, "name": name, "shape": shape})
    return specs


@functools.lru_cache(maxsize=32)
def _graph_specs(path: str, kind: str) -> dict[str, dict[str, Any]]:
    """``{name: {"dtype", "shape"}}`` of an ONNX graph's inputs or outputs (unknown dimensions ``-1``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    nodes = session.get_inputs() if kind == "inputs" else session.get_outputs()
    return {node.name: {"dtype": _ONNX_DTYPES.get(node.type, node.type),
                        "shape": [d if isinstance(d, int) else -1 for d in node.shape]} for node in nodes}  # fmt: skip


def verify(path: Path) -> ModelVersion:
    """Check a version folder and return it, or raise :class:`RegistryError` saying what is wrong."""
    where = f"{path.parent.name}/{path.name}"
    card_path = path / CARD_FILE
    if not card_path.is_file():
        raise RegistryError(f"{where}: no {CARD_FILE}")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RegistryError(f"{where}: {CARD_FILE} is not valid JSON ({error})") from None
    missing = [k for k in REQUIRED_CARD_FIELDS if k not in card]
    if missing:
        raise RegistryError(f"{where}: card lacks {', '.join(missing)}")
    if card["name"] != path.parent.name or card["version"] != path.name:
        raise RegistryError(
            f"{where}: card names {card['name']}/{card['version']}, folder is {path.parent.name}/{path.name}"
        )
    if "model.onnx" not in card["files"]:
        raise RegistryError(f"{where}: card lists no model.onnx")
    for name, meta in card["files"].items():
        file_path = path / name
        if not file_path.is_file():
            raise RegistryError(f"{where}: {name} listed in card is missing")
        actual = sha256_file(file_path)
        if actual != meta["sha256"]:
            raise RegistryError(
                f"{where}: sha256 mismatch for {name} (card {meta['sha256'][:12]}…, file {actual[:12]}…)"
            )
    return ModelVersion(name=card["name"], version=card["version"], path=path, card=card)


class Registry:
    """Scan ``root/<name>/<version>/`` folders; list, verify and pick versions.

    Parameters
    ----------
    root : Path
        The ``models/`` folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._versions: dict[str, dict[str, ModelVersion]] = {}
        self._active: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.degraded: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the folders; invalid versions are logged and left out, and a model whose active version is
        invalid is marked degraded (see the module docstring)."""
        versions: dict[str, dict[str, ModelVersion]] = {}
        refused: dict[str, str] = {}
        active: dict[str, str] = {}
        degraded: dict[str, str] = {}
        if self.root.is_dir():
            for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                folders = sorted((p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: version_key(p.name))
                for version_dir in folders:
                    try:
                        found = verify(version_dir)
                    except RegistryError as error:
                        refused[f"{model_dir.name}/{version_dir.name}"] = str(error)
                        logger.error("refusing model version: %s", error)
                        continue
                    versions.setdefault(found.name, {})[found.version] = found
                if not folders:
                    continue
                wanted = _pinned_version(model_dir) or folders[-1].name
                active[model_dir.name] = wanted
                if wanted not in versions.get(model_dir.name, {}):
                    reason = refused.get(f"{model_dir.name}/{wanted}", f"{model_dir.name}/{wanted} does not exist")
                    degraded[model_dir.name] = (
                        f"the active version {wanted} of {model_dir.name} is refused ({reason}); no other version "
                        "stands in for it: an operator must repair it or activate another version (matserve registry "
                        "activate NAME VERSION, then POST /v1/admin/registry/reload)"
                    )
                    logger.error("model %s is degraded: %s", model_dir.name, degraded[model_dir.name])
        self._versions, self._active, self.refused, self.degraded = versions, active, refused, degraded

    def names(self) -> list[str]:
        """Model names with at least one valid version."""
        return sorted(self._versions)

    def versions(self, name: str) -> list[str]:
        """Valid versions of a model, oldest first."""
        return sorted(self._versions.get(name, {}), key=version_key)

    def intended_version(self, name: str) -> str | None:
        """The version that should answer when a request does not pin one, valid or not (``None``: no folders)."""
        return self._active.get(name)

    def active_version(self, name: str) -> str:
        """The version served when a request does not pin one.

        Raises
        ------
        ModelDegraded
            That version was refused (:attr:`degraded` has the reason).
        KeyError
            The model has no version folder.
        """
        if name in self.degraded:
            raise ModelDegraded(self.degraded[name])
        if name not in self._active:
            raise KeyError(f"no valid version of model {name!r} in the registry")
        return self._active[name]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A verified version (the active one when ``version`` is None); KeyError if unknown, :class:`ModelDegraded`
        if ``version`` is None and the active version was refused."""
        if name not in self._versions:
            if version is None and name in self.degraded:
                raise ModelDegraded(self.degraded[name])
            raise KeyError(f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")
        chosen = version or self.active_version(name)
        if chosen not in self._versions[name]:
            raise KeyError(
                f"model {name!r} has no valid version {chosen!r}; available: {', '.join(self.versions(name))}"
            )
        return self._versions[name][chosen]

    def set_active(self, name: str, version: str) -> None:
        """Make ``version`` the active one, atomically (write a temp file, then rename over ``ACTIVE``)."""
        self.get(name, version)
        directory = self.root / name
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as handle:
            handle.write(version + "\n")
        os.replace(handle.name, directory / ACTIVE_FILE)
        self._active[name] = version
        self.degraded.pop(name, None)


def _pinned_version(model_dir: Path) -> str | None:
    """The version ``model_dir/ACTIVE`` names, or ``None`` without that file."""
    pinned = model_dir / ACTIVE_FILE
    if not pinned.is_file():
        return None
    return pinned.read_text().strip() or None
