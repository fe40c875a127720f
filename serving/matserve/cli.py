"""The ``matserve`` command line.

::

    matserve serve [--host 127.0.0.1] [--port 3000]          # every registry model on one HTTP server
    matserve predict formation-enthalpy NaCl Fe2O3 [--json]  # call a server through the SDK
    matserve predict xrd scan.xy other.csv [--plots DIR]      # phase + novelty of pattern files
    matserve predict ebsd a.png b.tif c.npy [--pc X,Y,Z] [--refine]  # orientations of EBSD patterns
    matserve predict ebsd-scan scan.h5 [--ipf map.png]       # orientation map + IPF-Z PNG of a scan
    matserve predict scattering a.cbf b.h5 [--saliency-png OUT] [--distance-m 0.25]  # technique/geometry/features
    matserve predict scattering frame.raw --shape 1043x981 --dtype int32             # headerless raw pixels
    matserve models [--json]                                  # what a server serves
    matserve registry list | activate NAME VERSION            # the local registry folder
    matserve triton build-repo OUT [--target cpu|gpu]         # Triton model repository from the registry
    matserve triton serve [--http-port 8000 --grpc-port 8001]  # run it on the local tritonserver
    matserve worker                                           # run batch jobs (needs REDIS_URL)
    matserve jobs submit FILE [--model M] [--wait]            # one input per line ('-': stdin)
    matserve jobs status | wait | results | cancel JOB_ID      # follow, read, cancel a job

(Over 500 lines: every command's handler and its human-readable printing live next to the one parser that wires
them, so that ``matserve --help`` and what each command prints stay in step.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_URL = os.environ.get("MATSERVE_URL", "http://127.0.0.1:3000")


def _serve(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "bentoml", "serve", "matserve.service:MatServe",
               "--host", args.host, "--port", str(args.port)]  # fmt: skip
    os.execv(sys.executable, command)  # replaces this process: signals reach the server directly
    return 0  # pragma: no cover


def _predict_formation_enthalpy(args: argparse.Namespace) -> int:
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            results = client.formation_enthalpy(args.formulas, version=args.version)
    except MatserveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = sum(1 for r in results if r.error)
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
        return 1 if failed else 0
    if results:
        print(f"# model {results[0].model} version {results[0].version}")
    _print_formation_enthalpy_table(results)
    return 1 if failed else 0


def _predict_xrd(args: argparse.Namespace) -> int:
    """Phase and novelty of each pattern file, one line per file (PNGs with ``--plots DIR``)."""
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            phases = client.classify_xrd(args.files, version=args.version, wavelength_angstrom=args.wavelength)
            novelty = client.xrd_novelty(args.files, wavelength_angstrom=args.wavelength, plots=args.plots is not None)
    except (MatserveError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        for n in novelty:
            n.save_plots(args.plots / Path(n.source or "pattern").stem)
    if args.json:
        rows = [{"phase": p.model_dump(exclude={"source"}), "novelty": n.model_dump(exclude={"reconstruction_png",
                 "latent_map_png", "source"}), "file": p.source} for p, n in zip(phases, novelty, strict=True)]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    _print_xrd_table(phases, novelty)
    return 0


def _number(value: float | None, spec: str, width: int) -> str:
    """``value`` formatted with ``spec``, or ``-`` (a field the answering version does not fill), right-aligned."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _xrd_details(phase: Any, novelty: Any) -> list[str]:
    """The lines under a pattern's row: why it abstained (with the best fit), the phases it was fitted with,
    and a partial measured range; none for answers of versions without the physics fit and a full range."""
    lines: list[str] = []
    if phase.abstained or phase.phase is None:
        text = f"unknown (abstained: {phase.reason})" if phase.reason else "unknown (abstained)"
        fit_phase = phase.best_fit_phase or novelty.best_fit_phase
        residual = phase.best_fit_residual if phase.best_fit_residual is not None else novelty.physics_residual
        if fit_phase is not None:
            text += f"; best fit {fit_phase}" + ("" if residual is None else f", residual {residual:.1%} of the signal")
        lines.append(text)
    elif phase.phases:
        kind = "mixture of" if len(phase.phases) > 1 else "fitted"
        lines.append(f"{kind} {len(phase.phases)} phase{'s' if len(phase.phases) > 1 else ''} (signal fraction):")
        lines += [f"  {component.describe()}" for component in phase.phases]
        if phase.unexplained_fraction is not None:
            lines.append(f"  unexplained {phase.unexplained_fraction:.1%} of the signal")
    measured = phase.measured_range_deg or novelty.measured_range_deg
    if measured is not None and phase.coverage < 1.0:
        lines.append(f"measured {measured[0]:.2f}-{measured[1]:.2f}° 2θ (Cu Kα) of 20-90°")
    return ["    " + line for line in lines]


def _print_xrd_table(phases: Sequence[Any], novelty: Sequence[Any]) -> None:
    """One row per pattern (phase or ``unknown``, its probability, P(unknown), the novelty percentile and score,
    the verdict, the nearest known phase), then indented detail lines (:func:`_xrd_details`); ``-`` marks a
    value the answering version does not give."""
    print(f"# {phases[0].model} {phases[0].version}, {novelty[0].model} {novelty[0].version}")
    print(f"{'file':<32} {'phase':<14} {'p':>6} {'p_unk':>6} {'novelty pct':>11} {'score':>6} {'novel':>6}  "
          "nearest known")  # fmt: skip
    for p, n in zip(phases, novelty, strict=True):
        print(f"{Path(p.source or '').name:<32} {p.phase_or_unknown:<14} {_number(p.probability, '.3f', 6)} "
              f"{_number(p.probability_unknown, '.3f', 6)} {n.novelty_percentile:11.1f} "
              f"{_number(n.novelty_score, '.3f', 6)} {'yes' if n.is_novel else 'no':>6}  {n.nearest_known_phase}")  # fmt: skip
        for line in _xrd_details(p, n):
            print(line)


def _pc_argument(text: str) -> list[float]:
    """``--pc 0.425,0.213,0.501`` -> three floats."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pc takes PCx,PCy,PCz, e.g. 0.425,0.213,0.501; got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--pc takes three numbers PCx,PCy,PCz; got {len(values)}")
    return values


def _predict_ebsd(args: argparse.Namespace) -> int:
    """Orientation of every pattern of the files (PNG, TIFF pages, .npy), one line per pattern."""
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            results = client.index_ebsd([str(f) for f in args.files], pc=args.pc, refine=args.refine,
                                        version=args.version)  # fmt: skip
    except (MatserveError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
        return 0
    print(f"# {results[0].model} {results[0].version}; Bunge Euler angles in degrees, m-3m fundamental zone")
    refined = any(r.refined for r in results)
    print(f"{'pattern':<36} {'phi1':>8} {'Phi':>8} {'phi2':>8} {'exp.err':>8} {'conf.':>6}"
          + (f" {'NCC':>6}" if refined else ""))  # fmt: skip
    for r in results:
        phi1, phi, phi2 = r.euler_bunge_deg
        line = f"{Path(r.source or '').name:<36} {phi1:8.3f} {phi:8.3f} {phi2:8.3f} {r.expected_error_deg:8.3f} "
        line += f"{r.confidence:6.3f}" + (f" {r.refinement_score:6.3f}" if r.refinement_score is not None else "")
        print(line)
    return 0


def _predict_ebsd_scan(args: argparse.Namespace) -> int:
    """Orientation map of a scan (.npy or HDF5); ``--ipf`` writes the IPF-Z PNG."""
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            scan = client.index_ebsd_scan(str(args.file), pc=args.pc, refine=args.refine, version=args.version,
                                          progress=not args.json)  # fmt: skip
    except (MatserveError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.ipf is not None:
        scan.save_ipf_png(args.ipf)
    if args.json:
        print(json.dumps(scan.model_dump(), indent=None))
        return 0
    indexed = scan.rows * scan.cols - len(scan.errors)
    print(f"# {scan.model} {scan.version}: {scan.rows} x {scan.cols} scan, {indexed} indexed, {len(scan.errors)} failed"
          + (f"; IPF-Z map written to {args.ipf}" if args.ipf is not None else ""))  # fmt: skip
    for error in scan.errors[:20]:
        print(f"row {error.row} col {error.col}: {error.error}")
    return 0


def _saliency_path(out: Path, source: str, single: bool) -> Path:
    """Where a frame's saliency PNG goes: ``out`` itself for one frame and a ``.png`` name, else a file in the
    folder ``out`` named after the image (``scan_0001.saliency.png``, ``stack_frame3.saliency.png``)."""
    if single and out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    base, _, frame = Path(source).name.partition("[frame ")
    stem = Path(base).stem + (f"_frame{frame.rstrip(']')}" if frame else "")
    return out / f"{stem}.saliency.png"


def _raw_shape(text: str) -> tuple[int, int]:
    """``(rows, cols)`` of ``--shape 1043x981`` (or ``1043,981``)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ROWSxCOLS, e.g. 1043x981") from None
    return rows, cols


def _predict_scattering(args: argparse.Namespace) -> int:
    """Technique, geometry and features of every frame of the files, one line per frame; ``--saliency-png`` writes
    the Grad-CAM PNGs. A file the server refuses is reported and the others go on (exit code 1)."""
    from matserve_client import Client, ClientRequestError, MatserveError, ServerError

    saliency = args.saliency_png is not None or args.saliency_label is not None
    rows: list[Any] = []
    failed: list[tuple[str, str]] = []
    try:
        with Client(args.url, timeout=args.timeout) as client:
            for path in args.files:
                try:
                    rows.extend(client.sort_scattering(
                        str(path), saliency=saliency, saliency_label=args.saliency_label, version=args.version,
                        distance_m=args.distance_m, wavelength_angstrom=args.wavelength_angstrom,
                        pixel_size_um=args.pixel_size_um, shape=args.shape, dtype=args.dtype))  # fmt: skip
                except (ClientRequestError, ServerError, OSError, ValueError) as error:
                    failed.append((str(path), getattr(error, "message", None) or str(error)))
    except MatserveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.saliency_png is not None:
        drawn = [r for r in rows if r.saliency_png is not None]
        for r in drawn:
            r.save_saliency_png(_saliency_path(args.saliency_png, r.source or "image", len(drawn) == 1))
    for path, message in failed:
        print(f"error: {path}: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.model_dump(exclude={"saliency_png"}) for r in rows]
                         + [{"source": path, "error": message} for path, message in failed], indent=2))  # fmt: skip
        return 1 if failed else 0
    if rows:
        print(f"# {rows[0].model} {rows[0].version}; probabilities of the most probable class; "
              "'?': technique below the calibrated confidence threshold (check by eye)")  # fmt: skip
        print(f"{'image':<36} {'technique':<9} {'p':>6}  {'geometry':<12} {'p':>6}  features")
    for r in rows:
        name = Path(r.source or "").name
        if r.error:
            print(f"{name:<36} error: {r.error}")
            continue
        technique = r.technique + ("?" if r.technique_confident is False else "")
        print(f"{name:<36} {technique:<9} {r.technique_probabilities[r.technique]:6.3f}  {r.geometry:<12} "
              f"{r.geometry_probabilities[r.geometry]:6.3f}  {', '.join(r.features) or '-'}")  # fmt: skip
    return 1 if failed else 0


def _print_formation_enthalpy_table(results: Sequence[Any]) -> None:
    """One line per :class:`~matserve_client.FormationEnthalpyResult` (``None``: not predicted)."""
    print(f"{'formula':<24} {'normalized':<20} {'eV/atom':>10} {'± eV/atom':>10}")
    for r in results:
        if r is None:
            print("(not predicted)")
            continue
        if r.error:
            print(f"{r.formula:<24} error: {r.error}")
            continue
        uncertainty = "" if r.uncertainty_ev_per_atom is None else f"{r.uncertainty_ev_per_atom:10.3f}"
        print(
            f"{r.formula:<24} {r.normalized_formula or '':<20} {r.formation_enthalpy_ev_per_atom:10.3f} {uncertainty}"
        )


def _models(args: argparse.Namespace) -> int:
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            models = client.models()
    except MatserveError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([m.model_dump() for m in models], indent=2))
        return 0
    for model in models:
        versions = ", ".join(v.version for v in model.versions)
        print(f"{model.name}: active {model.active_version}; versions {versions}; max batch {model.max_batch_size}")
    return 0


def _registry(args: argparse.Namespace) -> int:
    from matserve.registry import Registry
    from matserve.settings import Settings

    registry = Registry(Settings().models_dir)
    if args.registry_command == "activate":
        try:
            registry.set_active(args.name, args.version)
        except KeyError as error:
            print(f"error: {error.args[0]}", file=sys.stderr)
            return 1
        print(f"{args.name}: active version is now {args.version}")
        return 0
    for name in registry.names():
        active = registry.active_version(name)
        for version in registry.versions(name):
            print(f"{name}/{version}{'  (active)' if version == active else ''}")
    for key, reason in registry.refused.items():
        print(f"{key}  REFUSED: {reason}")
    return 0


def _triton_build_repo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from matserve.registry import Registry
    from matserve.settings import Settings
    from matserve.triton.repository import build_repository

    registry = Registry(Settings().models_dir)
    try:
        manifest = build_repository(registry, Path(args.out), target=args.target, instances=args.instances)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, entry in manifest["models"].items():
        versions = ", ".join(f"{n}={v}" for n, v in entry["versions"].items())
        print(f"{name}: Triton versions {versions}; domain model {entry.get('domain_model', '-')}")
    print(f"wrote {args.target} repository to {args.out}")
    return 0


def _triton_serve(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from matserve.registry import Registry
    from matserve.settings import Settings
    from matserve.triton.repository import build_repository
    from matserve.triton.server import serve

    if args.repository:
        return serve(Path(args.repository), args.http_port, args.grpc_port, args.metrics_port, args.host)
    with tempfile.TemporaryDirectory(prefix="matserve-triton-repo-") as repository:
        build_repository(Registry(Settings().models_dir), Path(repository), target="cpu")
        return serve(Path(repository), args.http_port, args.grpc_port, args.metrics_port, args.host)


def _worker(_args: argparse.Namespace) -> int:
    from matserve.worker import main as worker_main

    return worker_main()


def _read_inputs(path: str) -> list[str]:
    """Inputs from a file (or ``-``: standard input), one per line; blank lines are skipped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _print_job(job: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.model_dump(), indent=2))
        return
    line = f"job {job.job_id}: {job.state}, {job.done}/{job.total} done, {job.failed} failed"
    line += f" ({job.model} {job.version}{'' if job.durable else ', not durable'})"
    print(line + (f"; error: {job.error}" if job.error else ""))


def _jobs(args: argparse.Namespace) -> int:
    from matserve_client import Client, MatserveError

    try:
        with Client(args.url, timeout=args.timeout) as client:
            if args.jobs_command == "submit":
                job = client.submit_job(args.model, _read_inputs(args.file), version=args.version)
                if args.wait:
                    job = client.wait_job(job.job_id, timeout_s=args.wait_timeout, progress=not args.json)
            elif args.jobs_command == "status":
                job = client.job(args.job_id)
            elif args.jobs_command == "wait":
                job = client.wait_job(args.job_id, timeout_s=args.wait_timeout, progress=not args.json)
            elif args.jobs_command == "cancel":
                job = client.cancel_job(args.job_id)
            else:  # results
                results = list(client.job_results(args.job_id))
                if args.json:
                    for item in results:
                        print(json.dumps(item if item is None or isinstance(item, dict) else item.model_dump()))
                elif results and results[0] is not None and not isinstance(results[0], dict):
                    _print_formation_enthalpy_table(results)
                else:
                    for item in results:
                        print(json.dumps(item))
                return 0
    except (MatserveError, TimeoutError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_job(job, args.json)
    return 1 if job.state == "failed" else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="matserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve every registry model over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.set_defaults(handler=_serve)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL}, env MATSERVE_URL)")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    predict = commands.add_parser("predict", help="call a model on a server")
    targets = predict.add_subparsers(dest="model", required=True)
    enthalpy = targets.add_parser("formation-enthalpy", help="formation enthalpy (eV/atom) of formulas")
    enthalpy.add_argument("formulas", nargs="+")
    enthalpy.add_argument("--version", default=None, help="pin a model version")
    client_options(enthalpy)
    enthalpy.set_defaults(handler=_predict_formation_enthalpy)
    xrd = targets.add_parser("xrd", help="phase and novelty of powder XRD pattern files (.xy, .xye, .csv, .txt)")
    xrd.add_argument("files", nargs="+", type=Path)
    xrd.add_argument("--wavelength", type=float, default=None, help="X-ray wavelength, Å (default Cu Kα)")
    xrd.add_argument("--version", default=None, help="pin the phase model version")
    xrd.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write reconstruction/latent-map PNGs")
    client_options(xrd)
    xrd.set_defaults(handler=_predict_xrd)

    ebsd = targets.add_parser("ebsd", help="crystal orientations of EBSD pattern files (.png, .tif, .npy)")
    ebsd.add_argument("files", nargs="+", type=Path)
    ebsd.add_argument("--pc", type=_pc_argument, default=None, metavar="X,Y,Z",
                      help="projection centre PCx,PCy,PCz (Bruker convention; default the model's nominal PC)")  # fmt: skip
    ebsd.add_argument("--refine", action="store_true", help="refine against the master pattern on the server (slower)")
    ebsd.add_argument("--version", default=None, help="pin a model version")
    client_options(ebsd)
    ebsd.set_defaults(handler=_predict_ebsd)
    ebsd_scan = targets.add_parser("ebsd-scan", help="orientation map of an EBSD scan (4-D .npy or HDF5)")
    ebsd_scan.add_argument("file", type=Path)
    ebsd_scan.add_argument("--pc", type=_pc_argument, default=None, metavar="X,Y,Z", help="projection centre")
    ebsd_scan.add_argument("--refine", action="store_true", help="master-pattern refinement (max 256 per request)")
    ebsd_scan.add_argument("--version", default=None, help="pin a model version")
    ebsd_scan.add_argument("--ipf", type=Path, default=None, metavar="PNG", help="write the IPF-Z colour map")
    client_options(ebsd_scan)
    ebsd_scan.set_defaults(handler=_predict_ebsd_scan)

    scattering = targets.add_parser(
        "scattering",
        help="technique, geometry and features of 2D X-ray detector images (.tif .mccd .cbf .edf .h5 .npy .png, "
        ".gz/.bz2 of them, headerless .raw)",
    )
    scattering.add_argument("files", nargs="+", type=Path)
    scattering.add_argument("--saliency-png", type=Path, default=None, metavar="OUT",
                            help="write Grad-CAM PNGs: OUT.png for a single image, else into the folder OUT")  # fmt: skip
    scattering.add_argument("--saliency-label", default=None, metavar="LABEL",
                            help="draw this label's map (default the predicted technique)")  # fmt: skip
    scattering.add_argument("--version", default=None, help="pin a model version")
    scattering.add_argument("--distance-m", type=float, default=None, metavar="M",
                            help="sample-detector distance, m (overrides the file header)")  # fmt: skip
    scattering.add_argument("--wavelength-angstrom", type=float, default=None, metavar="A",
                            help="X-ray wavelength, Angstrom (overrides the file header)")  # fmt: skip
    scattering.add_argument("--pixel-size-um", type=float, default=None, metavar="UM",
                            help="detector pixel size, micrometres (overrides the file header)")  # fmt: skip
    scattering.add_argument("--shape", type=_raw_shape, default=None, metavar="ROWSxCOLS",
                            help="frame shape of headerless raw files, e.g. 1043x981 (with --dtype)")  # fmt: skip
    scattering.add_argument("--dtype", default=None, metavar="DTYPE",
                            help="pixel type of headerless raw files: uint16, int32, float32, ... ('>uint16': "
                                 "big-endian; with --shape)")  # fmt: skip
    client_options(scattering)
    scattering.set_defaults(handler=_predict_scattering)

    models = commands.add_parser("models", help="list the models a server serves")
    client_options(models)
    models.set_defaults(handler=_models)

    registry = commands.add_parser("registry", help="inspect the local registry folder (MATSERVE_MODELS_DIR)")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    registry_commands.add_parser("list", help="versions, the active one, and refused folders")
    activate = registry_commands.add_parser("activate", help="make a version the active one (atomic)")
    activate.add_argument("name")
    activate.add_argument("version")
    registry.set_defaults(handler=_registry)

    triton = commands.add_parser("triton", help="Triton Inference Server: model repository and local server")
    triton_commands = triton.add_subparsers(dest="triton_command", required=True)
    build_repo = triton_commands.add_parser("build-repo", help="write a Triton model repository from the registry")
    build_repo.add_argument("out", help="output folder (replaced if it holds an earlier repository)")
    build_repo.add_argument("--target", choices=("cpu", "gpu"), default="cpu",
                            help="gpu: onnxruntime backend on KIND_GPU (official container); "
                                 "cpu: python backend + ONNX Runtime (default)")  # fmt: skip
    build_repo.add_argument("--instances", type=int, default=1, help="instances per tensor model")
    build_repo.set_defaults(handler=_triton_build_repo)
    triton_serve = triton_commands.add_parser(
        "serve", help="run the registry (or --repository) on the tritonserver of the nvidia-pytriton wheel"
    )
    triton_serve.add_argument("--repository", default=None, help="a repository from build-repo (default: build one)")
    triton_serve.add_argument("--host", default="127.0.0.1")
    triton_serve.add_argument("--http-port", type=int, default=8000)
    triton_serve.add_argument("--grpc-port", type=int, default=8001)
    triton_serve.add_argument("--metrics-port", type=int, default=8002)
    triton_serve.set_defaults(handler=_triton_serve)

    worker = commands.add_parser(
        "worker", help="run batch jobs from Redis (REDIS_URL) with the registry models loaded in-process"
    )
    worker.set_defaults(handler=_worker)

    jobs = commands.add_parser("jobs", help="batch jobs on a server: submit, status, wait, results, cancel")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = jobs_commands.add_parser("submit", help="submit a file of inputs, one per line ('-': stdin)")
    submit.add_argument("file")
    submit.add_argument("--model", default="formation_enthalpy")
    submit.add_argument("--version", default=None, help="pin a model version")
    submit.add_argument("--wait", action="store_true", help="wait until the job finishes (progress bar)")
    for name, help_text in (("status", "state and progress"), ("wait", "wait until it finishes"),
                            ("results", "every result, in input order"), ("cancel", "cancel it")):  # fmt: skip
        command = jobs_commands.add_parser(name, help=help_text)
        command.add_argument("job_id")
    for command in jobs_commands.choices.values():
        client_options(command)
        command.add_argument("--wait-timeout", type=float, default=None, help="seconds to wait at most")
    jobs.set_defaults(handler=_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``matserve`` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
