"""What a handler raises to steer its task's retry."""

from __future__ import annotations

from typing import Optional

from ._convert import Seconds, seconds

__all__ = ["Retry", "NoRetry"]


class Retry(Exception):
    """Raise in a handler to Nack the task for a retry.

    ``after`` (seconds or timedelta) replaces the queue's backoff; without it the
    queue's backoff applies. The task still goes DEAD once its attempts are used.
    """

    def __init__(self, message: str = "retry requested", *, after: Optional[Seconds] = None) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds until the retry, or None for the queue's backoff.
        self.after: Optional[float] = None if after is None else seconds(after)


class NoRetry(Exception):
    """Raise in a handler to fail the task for good (Nack with ``no_retry``: DEAD at once)."""

    def __init__(self, message: str = "failed without retry") -> None:
        super().__init__(message)
        self.message = message
