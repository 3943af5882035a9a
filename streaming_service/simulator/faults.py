"""Stream faults the simulator injects on request (the public methods of `SchwabSimulator` fill
these in; the streamer side reads them): denied logins, replies replaced or preceded by other
frames, and frames interleaved between real data frames."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from streaming_service.simulator.connection import Frame

__all__ = ["StreamFaults"]


class StreamFaults:
    """Pending stream faults. Each is used once, in the order asked for."""

    def __init__(self) -> None:
        self.logins_to_deny = 0
        self._replies: list[tuple[str | None, str | None, Frame, bool]] = []  # ..., replace the reply
        self._interleave: deque[Frame] = deque()
        self._per_data_frame = 1
        self.interleaved_sent = 0

    def add_reply_fault(
        self, frame: Frame, service: str | None, command: str | None, *, replace: bool
    ) -> None:
        self._replies.append((service, command, frame, replace))

    def reply_frames(self, service: object, command: object, reply: Frame) -> list[Frame]:
        """What to send for the reply `reply` to a request of `service`/`command`."""
        for index, (want_service, want_command, frame, replace) in enumerate(self._replies):
            if want_service in (None, service) and want_command in (None, command):
                del self._replies[index]
                return [frame] if replace else [frame, reply]
        return [reply]

    def deny_login(self) -> bool:
        """Whether to deny this login (uses up one denial)."""
        if self.logins_to_deny <= 0:
            return False
        self.logins_to_deny -= 1
        return True

    def interleave(self, frames: Iterable[Frame], per_data_frame: int) -> None:
        self._interleave.extend(frames)
        self._per_data_frame = per_data_frame

    @property
    def interleave_pending(self) -> int:
        return len(self._interleave)

    def after_data_frame(self) -> list[Frame]:
        """The frames to send right after a real data frame (counted in `interleaved_sent`)."""
        count = min(self._per_data_frame, len(self._interleave))
        self.interleaved_sent += count
        return [self._interleave.popleft() for _ in range(count)]
