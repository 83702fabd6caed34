"""The one event loop of the simulations: arrivals, engine wake-ups and periodic ticks.

Events run in time order; at equal times a tick runs first, then an engine wake-up, then an
arrival (a tick's figures are those from before the instant; an engine finishes what is due
before a new request joins it). The engines own their plans: `Replica.submit` and `advance`
return when the engine must be advanced next, and bump its `version`, so a superseded
wake-up is dropped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.sim.fleet_model import Job, Replica
from benchmarks.sim.fleet_model import Sequence as EngineSequence


@dataclass(frozen=True)
class Handlers:
    """What a simulation does at each event."""

    arrive: Callable[[Any, float], None]  # a request arrives (request, now)
    finished: Callable[[int, list[EngineSequence], float], None]  # engine i finished these
    tick: Callable[[float], None]  # a periodic tick at `now`
    # Whether a tick at `now` is still due, given whether arrivals are left.
    ticking: Callable[[float, bool], bool]
    # Work held outside the engines (a queue at a router): the loop runs until it is gone.
    backlog: Callable[[], bool] = lambda: False


class EventLoop:
    def __init__(self, tick_s: float, first_tick_s: float = 0.0):
        self.engines: list[Replica] = []
        self.now = 0.0
        self._tick_s = tick_s
        self._next_tick = first_tick_s
        self._wakeups: list[tuple[float, int, int]] = []  # (time, engine, version)

    def add(self, engine: Replica) -> int:
        self.engines.append(engine)
        return len(self.engines) - 1

    def submit(self, engine: int, job: Job, now: float) -> None:
        self._schedule(engine, self.engines[engine].submit(job, now))

    def _schedule(self, engine: int, when: float | None) -> None:
        if when is not None:
            heapq.heappush(self._wakeups, (when, engine, self.engines[engine].version))

    def run(self, arrivals: Sequence[Any], on: Handlers) -> None:
        """Replay `arrivals` (each with an `arrival` time, in order) until all work is done."""
        a = 0
        while a < len(arrivals) or self._wakeups or on.backlog():
            t_arrival = arrivals[a].arrival if a < len(arrivals) else math.inf
            t_wake = self._wakeups[0][0] if self._wakeups else math.inf
            due = on.ticking(self._next_tick, a < len(arrivals))
            t_tick = self._next_tick if due else math.inf
            if t_tick <= min(t_arrival, t_wake):
                self.now = t_tick
                on.tick(t_tick)
                self._next_tick += self._tick_s
            elif t_wake <= t_arrival:
                when, i, version = heapq.heappop(self._wakeups)
                if version != self.engines[i].version:
                    continue  # superseded: the engine replanned
                self.now = when
                done, following = self.engines[i].advance(when)
                self._schedule(i, following)
                on.finished(i, done, when)
            else:
                request = arrivals[a]
                a += 1
                self.now = request.arrival
                on.arrive(request, request.arrival)
