"""The stream's counters (`StreamStats`) and how its problems are counted and logged (`Problems`).

A bad frame (the frame's fault) and an internal error (our code's fault) are counted apart. Logs
stay small however often a problem repeats: the 1st, 10th, 100th, ... occurrence of each kind is
logged loudly (warning for bad frames, error with the traceback for internal errors) with the
running count, the others at debug. Texts in the log are at most `EXCERPT_CHARS` long.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from streaming_service.sources.frames import EXCERPT_CHARS, BadFrame, describe

__all__ = ["Problems", "StreamStats"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class StreamStats:
    """Counters for the status line and /healthz.

    Times: `last_frame_at` is event-loop (monotonic) time. `last_data_at` and
    `last_data_at_by_symbol` are wall-clock epoch seconds (`time.time()`).
    `bad_frame_kinds` counts bad frames by kind (see `BadFrame.kind`)."""

    frames: int = 0  # frames read while subscribed, bad ones included
    bad_frames: int = 0
    internal_errors: int = 0
    connects: int = 0  # successful logins
    stale_reconnects: int = 0
    login_denials: int = 0
    last_frame_at: float | None = None
    last_data_at: float | None = None  # the last data frame that reached our handlers
    last_data_at_by_symbol: dict[str, float] = field(default_factory=dict)  # last valid equity item
    bad_frame_kinds: dict[str, int] = field(default_factory=dict)


class Problems:
    """Counts bad frames and internal errors into `stats` and logs them (see the module docstring)."""

    def __init__(self, stats: StreamStats) -> None:
        self._stats = stats
        self._internal: dict[str, int] = {}

    def bad_frame(self, exc: BadFrame) -> None:
        """A frame or item was skipped because of its content."""
        self._stats.bad_frames += 1
        count, loud = _occurrence(self._stats.bad_frame_kinds, exc.kind)
        (log.warning if loud else log.debug)(
            "bad frame skipped",
            kind=exc.kind,
            reason=str(exc)[:EXCERPT_CHARS],
            count=count,
            bad_frames=self._stats.bad_frames,
        )

    def internal_error(self, exc: Exception, where: str) -> None:
        """Our code (`where`) raised `exc` while handling a frame: a bug, not the frame's fault."""
        self._stats.internal_errors += 1
        count, loud = _occurrence(self._internal, f"{where}: {type(exc).__name__}")
        (log.error if loud else log.debug)(
            "internal error",
            where=where,
            error=describe(exc),
            count=count,
            internal_errors=self._stats.internal_errors,
            exc_info=exc,
        )


def _occurrence(counts: dict[str, int], kind: str) -> tuple[int, bool]:
    """Count one more `kind`; return (its count, whether to log it loudly: 1, 10, 100, ...)."""
    count = counts[kind] = counts.get(kind, 0) + 1
    while count % 10 == 0:
        count //= 10
    return counts[kind], count == 1
