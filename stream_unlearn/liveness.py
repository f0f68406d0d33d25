"""Liveness of the worker's poll loop, served as ``/healthz`` beside ``/metrics``.

The metrics endpoint answers from its own thread even when the loop is
stuck (a hung call, a deadlock), so a probe of ``/metrics`` says only that
the process is up. The loop beats once per step instead, and ``/healthz``
answers 503 once no beat came for ``stall_after`` seconds. Before the first
beat (restoring snapshots, waiting for Kafka) it answers 200: a long
restore is progress, and a container probe must not kill it. A Kafka
outage does not stall the loop (its polls return empty), so the worker
stays live through one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["HEALTH_PATH", "Liveness"]

HEALTH_PATH = "/healthz"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Liveness:
    """When the loop last stepped, and whether that is too long ago.

    ``stall_after`` seconds without a beat make the loop stalled; 0 never
    does (the endpoint then only says the process serves HTTP).
    """

    def __init__(self, stall_after: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self._clock = clock
        self._last_beat: float | None = None

    @property
    def stall_after(self) -> float:
        """Seconds without a beat that make the loop stalled (0: never)."""
        return self._stall_after

    @stall_after.setter
    def stall_after(self, seconds: float) -> None:
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"stall_after must be a finite number of seconds >= 0, got {seconds}")
        self._stall_after = float(seconds)

    def beat(self) -> None:
        """The loop completed a step."""
        self._last_beat = self._clock()

    def status(self) -> tuple[bool, str]:
        """(live, a one-line reason)."""
        last = self._last_beat
        if last is None:
            return True, "starting: the poll loop has not stepped yet"
        quiet = self._clock() - last
        if self.stall_after and quiet > self.stall_after:
            return False, f"stalled: no poll loop step for {quiet:.1f} s (limit {self.stall_after:g} s)"
        return True, f"ok: last poll loop step {quiet:.1f} s ago"

    def wsgi(self, app: WsgiApp) -> WsgiApp:
        """``app`` (the metrics), with :data:`HEALTH_PATH` answered by :meth:`status`."""

        def routed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != HEALTH_PATH:
                return app(environ, start_response)
            live, reason = self.status()
            body = (reason + "\n").encode("utf-8")
            start_response("200 OK" if live else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

        return routed
