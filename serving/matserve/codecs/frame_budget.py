"""How many frames and decoded pixels one scattering request may carry: :class:`FrameBudget`, checked by every
decoder of :mod:`matserve.codecs.detector_files` before it allocates pixels (HTTP 413 over it)."""

from __future__ import annotations

import math
import threading

from matserve.codecs.scattering import ImageError

DEFAULT_MAX_FRAMES = 256
DEFAULT_MAX_PIXELS = 2**27
"""Default decoded pixels per request (134 M: e.g. 29 Eiger 4M or 54 Pilatus 2M frames; 512 MiB as 32-bit)."""
FRAMES_SETTING = "MATSERVE_MAX_SCATTERING_FRAMES"
PIXELS_SETTING = "MATSERVE_MAX_SCATTERING_PIXELS"
"""The settings of the server's budget, named in the 413 messages."""


class TooManyFrames(ImageError):
    """More frames or decoded pixels than one request may carry (HTTP 413)."""


class FrameBudget:
    """Frames and decoded pixels one request may still carry; checked before pixels are decoded.

    Parameters
    ----------
    max_frames : int
        Most frames per request.
    max_pixels : int
        Most decoded pixels (summed over frames) per request.
    """

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self.frames = 0
        self.pixels = 0
        self._lock = threading.Lock()  # the files of one request may be read on several threads

    def take(self, count: int, shape: tuple[int, ...], where: str) -> None:
        """Reserve ``count`` frames of ``shape``.

        Raises
        ------
        TooManyFrames
            Over either limit; the message says which (and its setting) and how to split.
        """
        with self._lock:
            self.frames, self.pixels = self._after(count, shape, where)

    def check(self, count: int, shape: tuple[int, ...], where: str, at_least: bool = False) -> None:
        """Like :meth:`take` without reserving: a header's claim, checked before the decoder allocates
        (``at_least``: the file may hold more, e.g. TIFF pages counted so far)."""
        with self._lock:
            self._after(count, shape, where, "at least " if at_least else "")

    def pixels_left(self) -> int:
        """Decoded pixels the request may still carry."""
        with self._lock:
            return max(self.max_pixels - self.pixels, 0)

    def _after(self, count: int, shape: tuple[int, ...], where: str, at_least: str = "") -> tuple[int, int]:
        frames = self.frames + count
        if frames > self.max_frames:
            raise TooManyFrames(
                f"{where}: too many frames: at most {self.max_frames} per request ({FRAMES_SETTING}; this one would "
                f"have {at_least}{frames}); send fewer frames or files per request"
            )
        pixels = self.pixels + count * math.prod(int(s) for s in shape)
        if pixels > self.max_pixels:
            raise TooManyFrames(
                f"{where}: too many pixels: at most {self.max_pixels} decoded pixels per request ({PIXELS_SETTING}; "
                f"this one would have {at_least}{pixels}, {count} frame(s) of {' x '.join(str(s) for s in shape)}); "
                "send fewer or smaller frames per request"
            )
        return frames, pixels
