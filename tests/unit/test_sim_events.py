"""The simulations' one event loop (benchmarks/sim/events.py)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.sim.events import EventLoop, Handlers
from benchmarks.sim.fleet_model import Replica, SimpleJob, replica_type

DENSE = replica_type("gemma-4-31b-it", "fp8", "fp8")


@dataclass(frozen=True)
class Arrival:
    arrival: float
    job: SimpleJob


def _recording(loop: EventLoop, log: list, tick_until: float) -> Handlers:
    return Handlers(
        arrive=lambda a, now: (log.append(("arrive", now)), loop.submit(0, a.job, now)),
        finished=lambda i, done, now: log.extend(("finished", i) for _ in done),
        tick=lambda now: log.append(("tick", now)),
        ticking=lambda now, _: now <= tick_until,
    )


def test_at_one_instant_a_tick_runs_before_an_arrival():
    loop = EventLoop(tick_s=1.0)
    loop.add(Replica(DENSE))
    log: list = []
    loop.run([Arrival(1.0, SimpleJob(100, 5))], _recording(loop, log, tick_until=1.0))
    assert log[:3] == [("tick", 0.0), ("tick", 1.0), ("arrive", 1.0)]


def test_every_job_finishes_once_and_the_clock_ends_at_the_last_event():
    loop = EventLoop(tick_s=10.0)
    loop.add(Replica(DENSE))
    log: list = []
    arrivals = [Arrival(t, SimpleJob(500, 50)) for t in (0.0, 0.01, 0.02, 3.0)]
    loop.run(arrivals, _recording(loop, log, tick_until=0.0))
    assert [e for e in log if e[0] == "finished"] == [("finished", 0)] * 4
    assert loop.now > 3.0 and loop.engines[0].ongoing == 0


def test_the_loop_ticks_on_while_work_waits_outside_the_engines():
    loop = EventLoop(tick_s=1.0, first_tick_s=1.0)
    held = [3]  # ticks until the held work is released

    def tick(now: float) -> None:
        held[0] -= 1

    on = Handlers(
        arrive=lambda a, now: None,
        finished=lambda i, done, now: None,
        tick=tick,
        ticking=lambda now, _: held[0] > 0,
        backlog=lambda: held[0] > 0,
    )
    loop.run([], on)
    assert held == [0] and loop.now == 3.0
