"""The demo and the fakes behind it, kept apart from the product (like `flask.testing`).

- `simulator`: a simulated fleet of regions over real HTTP on loopback (`python -m
  dashboard.demo.simulator`), steerable from Python or over HTTP; tests and benchmarks use it;
- `seed`: synthetic weeks of history (`dashboard seed-history`), written through the poller's own
  evaluation and store call;
- `run`: `dashboard demo`, the whole product against the simulated fleet with a scripted incident;
- `cluster` and `etcd_local`: `dashboard cluster-demo`, three instances agreeing through local etcd.

Importing this package imports none of them: the product never needs a fake.
"""
