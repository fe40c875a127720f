"""Read the common two-column diffraction files (``.xy``, ``.xye``, ``.csv``, ``.txt``, ``.dat``) into 2θ and intensity.

Needs nothing beyond the standard library. Accepted layout: one point per line, 2θ (degrees) then intensity,
optionally a third column (``.xye``: the intensity's standard error, ignored), separated by spaces, tabs,
commas or semicolons. Blank lines and comment lines starting with ``#``, ``!``, ``;`` or ``'`` are skipped, and
so are header lines before the first numeric row (e.g. ``2theta,intensity``). A non-numeric line after the
data has started is an error that names the line. The server reads uploaded pattern files by the same rules
(``matserve.codecs.xrd_uploads.parse_text``, a twin, as the server codecs do not import the SDK; a unit test
keeps them in step).

>>> from matserve_client.xrd_files import read_pattern
>>> two_theta_deg, intensity = read_pattern("scan.xy")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PatternFileError", "XrdPattern", "parse_pattern", "read_pattern"]

_SPLIT = re.compile(r"[\s,;]+")
_COMMENT = ("#", "!", ";", "'")


class PatternFileError(ValueError):
    """A file that is not a two-column diffraction pattern, with the line that shows why."""


@dataclass(frozen=True)
class XrdPattern:
    """A pattern read from a file.

    Attributes
    ----------
    two_theta_deg : list of float
        2θ positions, degrees, in file order.
    intensity : list of float
        Intensities, same length.
    """

    two_theta_deg: list[float]
    intensity: list[float]

    def __iter__(self) -> Iterator[list[float]]:
        """Unpack as ``two_theta_deg, intensity = pattern``."""
        return iter((self.two_theta_deg, self.intensity))

    def to_request(self) -> dict[str, list[float]]:
        """The JSON shape the XRD endpoints accept."""
        return {"two_theta_deg": self.two_theta_deg, "intensity": self.intensity}


def parse_pattern(text: str, source: str = "<text>") -> XrdPattern:
    """Parse the text of a two-column pattern file (see the module docstring for the accepted layout)."""
    two_theta_deg: list[float] = []
    intensity: list[float] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        fields = [f for f in _SPLIT.split(line.strip(" \t,;"), maxsplit=3) if f]  # bounded: 3 fields + rest
        try:
            values = [float(f) for f in fields[:3]]
        except ValueError:
            if not two_theta_deg:
                continue  # a header before the data
            raise PatternFileError(f"{source}, line {number}: not numbers: {raw.strip()[:80]!r}") from None
        if len(values) < 2:
            raise PatternFileError(f"{source}, line {number}: needs 2θ and intensity, found {len(values)} value(s)")
        two_theta_deg.append(values[0])
        intensity.append(values[1])
    if not two_theta_deg:
        raise PatternFileError(f"{source}: no data rows (expected lines of '2θ intensity [error]')")
    return XrdPattern(two_theta_deg=two_theta_deg, intensity=intensity)


def read_pattern(path: str | Path) -> XrdPattern:
    """Read a ``.xy`` / ``.xye`` / ``.csv`` / ``.txt`` / ``.dat`` file (UTF-8 or Latin-1)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_pattern(text, source=str(path))
