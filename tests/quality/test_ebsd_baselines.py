"""Light checks of the EBSD baselines script (no kikuchipy simulation or indexing)."""

import json
from types import SimpleNamespace

import numpy as np

from training.ebsd import baselines


def test_first_rotations_takes_the_best_match_column() -> None:
    data = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    xmap = SimpleNamespace(size=2, rotations=SimpleNamespace(data=data))
    np.testing.assert_array_equal(baselines.first_rotations(xmap), data[:, 0])


def test_table_and_placeholder_card(tmp_path) -> None:
    row = {"mean_disorientation_deg": 1.234, "median_disorientation_deg": 0.5, "patterns_per_s": 42.0}
    text = baselines.table({"results": {"test_clean": {"hough": row}, "real_ni_9": {}}})
    assert "| test_clean | 1.23 / 0.50° @ 42/s |" in text
    assert "| real_ni_9 | - |" in text
    (tmp_path / "card.json").write_text(json.dumps({"metrics": {}}))
    assert not baselines.card_is_trained(tmp_path)
    assert not baselines.card_is_trained(None)
