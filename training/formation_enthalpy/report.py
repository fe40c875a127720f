"""Print the results table of a registry version as Markdown (pasted into README and the training notes).

Run: ``python -m training.formation_enthalpy.report [VERSION]``.
"""

from __future__ import annotations

import sys

from matserve.registry import Registry
from matserve.settings import Settings


def row(name: str, metrics: dict | None, seed_mae: float | None, note: str = "") -> str:
    seed = f"{seed_mae:.3f}" if seed_mae is not None else "–"
    if not metrics:
        return f"| {name} | – | – | – | – | – | {seed} | {note} |"
    return (
        f"| {name} | {metrics['mae_ev_per_atom']:.4f} | {metrics['rmse_ev_per_atom']:.4f} | {metrics['r2']:.4f} | "
        f"{metrics['p90_abs_error_ev_per_atom']:.4f} | {metrics['n_train']:,} | {seed} | {note} |"
    )


def table(card: dict) -> str:
    """Test split, then the two chemical-system hold-outs, for the served model and every baseline."""
    seed = card["seed_paper"]
    served, baselines = card["metrics"], card.get("baselines", {})
    rf_comp, rf_phys = baselines.get("rf_comp", {}), baselines.get("rf_phys", {})
    reference = baselines.get("elemnet_reference", {})
    members = card["architecture"]["members"]
    lines = [
        "| model | MAE eV/atom | RMSE eV/atom | R² | P90 abs err eV/atom | train size | seed paper MAE | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| **test split** ({card['split']['sizes']['test']:,} compositions, seed {card['split']['seed']}) | | | | | | | |",
        row(f"served: IRNet-style ensemble ×{members}", served["test"], None, f"v{card['version']}"),
        row("ElemNet reference (Table 3.1)", reference.get("test"), seed["elemnet_mae_ev_per_atom"],
            f"{reference.get('training', {}).get('epochs_run', '?')} epochs (CPU budget)"),
        row("RF-Phys (Magpie, 149 features)", rf_phys.get("test"), seed["rf_phys_mae_ev_per_atom"]),
        row("RF-Comp (element fractions)", rf_comp.get("test"), seed["rf_comp_mae_ev_per_atom"]),
    ]  # fmt: skip
    for system in ("Ti-O", "Na-Fe-Mn-O"):
        key = f"holdout_{system}"
        held = served.get(key)
        size = f"{held['n_test']} compounds" if held else ""
        lines.append(f"| **hold-out {system}** ({size}, never in training) | | | | | | | |")
        lines.append(row(f"served architecture ×{held['ensemble_members'] if held else '?'}", held,
                         seed[f"elemnet_holdout_{system}_mae_ev_per_atom"], "seed number is ElemNet's"))  # fmt: skip
        lines.append(row("RF-Phys", rf_phys.get(key), None))
        lines.append(row("RF-Comp", rf_comp.get(key), None))
    return "\n".join(lines)


def main() -> None:
    registry = Registry(Settings().models_dir)
    version = registry.get("formation_enthalpy", sys.argv[1] if len(sys.argv) > 1 else None)
    print(table(version.card))


if __name__ == "__main__":
    main()
