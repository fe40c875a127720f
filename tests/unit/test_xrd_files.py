"""SDK readers for two-column diffraction files, on files the test writes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matserve.codecs.xrd import encode_pattern
from matserve_client.xrd_files import PatternFileError, read_pattern


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("scan.xy", "# Cu Ka, 2theta intensity\n20.00 105\n20.02 107\n\n20.04 110\n"),
        ("scan.xye", "20.00\t105\t10.2\n20.02\t107\t10.3\n20.04\t110\t10.5\n"),
        ("scan.csv", "2theta,intensity\n20.00,105\n20.02,107\n20.04,110\n"),
        ("scan.txt", "! instrument X\n'sample 7\n20.00; 105\n20.02; 107\n20.04; 110\n"),
    ],
)
def test_common_formats_read_the_same_points(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    two_theta_deg, intensity = read_pattern(path)
    assert two_theta_deg == [20.0, 20.02, 20.04]
    assert intensity == [105.0, 107.0, 110.0]


def test_latin1_and_bom_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "bom.xy").write_bytes("\ufeff20 1\n21 2\n".encode())
    (tmp_path / "latin.xy").write_bytes("# 2\xb0 intensity\n20 1\n21 2\n".encode("latin-1"))
    assert read_pattern(tmp_path / "bom.xy").intensity == [1.0, 2.0]
    assert read_pattern(tmp_path / "latin.xy").two_theta_deg == [20.0, 21.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# only comments\n", "no data rows"),
        ("20 1\n21 2\nEND OF DATA\n", "line 3: not numbers"),
        ("20 1\n21\n", "line 2: needs 2θ and intensity"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.xy"
    path.write_text(text)
    with pytest.raises(PatternFileError, match=message):
        read_pattern(path)


def test_a_file_round_trips_into_the_codec(tmp_path: Path) -> None:
    grid = np.linspace(15, 95, 4001)
    counts = 50 + 1000 * np.exp(-0.5 * ((grid - 44.7) / 0.1) ** 2)
    path = tmp_path / "fe.xy"
    path.write_text("\n".join(f"{x:.4f} {y:.2f}" for x, y in zip(grid, counts, strict=True)))
    pattern = read_pattern(path)
    encoded = encode_pattern(**pattern.to_request())
    assert abs(np.linspace(20, 90, 2048)[np.argmax(encoded.intensity)] - 44.7) < 0.05
