"""A circuit breaker for dependencies that may go away (the Redis cache, Triton): skip them, then probe."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("matserve.breaker")


class CircuitBreaker:
    """Skip a dependency for ``retry_after_s`` seconds after it fails, then let one call probe it.

    Thread-safe. Logs one warning when an outage starts and one info line when it ends.

    Parameters
    ----------
    name : str
        What is guarded, for the log lines (e.g. ``"Redis cache at redis://..."``).
    retry_after_s : float
        Seconds to skip the dependency after a failure.
    """

    def __init__(self, name: str, retry_after_s: float) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._failing = False
        self._closed_after_s = 0.0  # monotonic time before which calls are skipped

    @property
    def failing(self) -> bool:
        """Whether the last call failed (the dependency is considered down)."""
        return self._failing

    def allow(self) -> bool:
        """Whether to call the dependency now. While it is down, one caller per period gets ``True`` (a probe)."""
        now_s = time.monotonic()
        with self._lock:
            if now_s < self._closed_after_s:
                return False
            if self._failing:  # half-open: this caller probes, the others keep skipping until it reports
                self._closed_after_s = now_s + self.retry_after_s
            return True

    def record_success(self) -> None:
        """The call worked: close the breaker (and say so if it was open)."""
        with self._lock:
            was_failing, self._failing, self._closed_after_s = self._failing, False, 0.0
        if was_failing:
            logger.warning("%s is reachable again; using it", self.name)

    def record_failure(self, error: BaseException) -> None:
        """The call failed: skip the dependency for ``retry_after_s`` (warn only when an outage starts)."""
        with self._lock:
            was_failing, self._failing = self._failing, True
            self._closed_after_s = time.monotonic() + self.retry_after_s
        if not was_failing:
            logger.warning(
                "%s is unavailable (%s: %s); going on without it and retrying every %.1f s",
                self.name,
                type(error).__name__,
                error,
                self.retry_after_s,
            )
