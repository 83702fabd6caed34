"""Seeded discrete-event simulations of a simulated H100 fleet (a cost model, not GPUs).

- `fleet_model`: the cost model of one engine and a continuous-batching replica simulator.
- `deployment`: what a config deploys, as the simulations see it (pools, engine types).
- `workload`: the request mix and its arrival processes.
- `events`: the one event loop (arrivals, engine wake-ups, periodic ticks).
- `gateway`: the production routing policy and load tracker, fed from the simulated engines.
- `signals`: what Serve and Prometheus feed an autoscaling policy.
- `report`: SLOs, percentiles, Markdown tables and plots.

Entry points: `python -m benchmarks.sim.routing` and `python -m benchmarks.sim.autoscale`
(`python -m benchmarks.sim.fleet_model --check` for the cost model's sanity checks).
"""
