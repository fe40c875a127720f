"""Regression metrics reported in model cards (all in eV/atom except R²)."""

from __future__ import annotations

import numpy as np


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_train: int) -> dict[str, float | int]:
    """MAE, RMSE, R², 90th-percentile absolute error, and the sizes behind them.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray
        Formation enthalpies in eV/atom, shape ``(n,)``.
    n_train : int
        Number of compositions the model was trained on.
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    error = np.abs(y_pred - y_true)
    ss_res = float(np.sum((y_pred - y_true) ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mae_ev_per_atom": float(error.mean()),
        "rmse_ev_per_atom": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "p90_abs_error_ev_per_atom": float(np.percentile(error, 90)),
        "mean_abs_deviation_ev_per_atom": float(np.mean(np.abs(y_true - y_true.mean()))),
        "n_test": len(y_true),
        "n_train": int(n_train),
    }
