"""`dashboard demo`: the product against a simulated fleet with a scripted incident.

Everything lives in a local data folder (config and database), so a newcomer needs no config.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

import yaml
from werkzeug.security import generate_password_hash

from ..config import load_settings
from .simulator import IncidentScript, SimulatedFleet

DEMO_REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
INCIDENT_REGION = "eu-west-1"
DEMO_OPERATOR = "oncall"


def write_demo_config(data_dir: Path, fleet: SimulatedFleet, interval: float, password: str) -> Path:
    """Write the demo's config.yaml: the simulated fleet, a short poll interval, one operator."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.yaml"
    config = {
        "deployment": fleet.deployment_block(),
        "dashboard": {
            "database": "dashboard.db",
            "routing_file": "routing.json",
            "poll_interval_seconds": interval,
            "timeout_seconds": min(2.0, interval / 2),
            # eu-west-1 holds workspaces whose writes are pinned to it: it fails over read-only only.
            "residency_pinned": [INCIDENT_REGION],
            "auth": {"operators": {DEMO_OPERATOR: generate_password_hash(password)}},
        },
    }
    path.write_text("# written by `dashboard demo`; the fleet's ports change every run\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(args: argparse.Namespace) -> int:
    from ..runtime import Runtime
    from ..web.server import ServerError, wait_until_stopped

    if args.interval < 1:
        print("dashboard demo: --interval must be at least 1 second", file=sys.stderr)
        return 2
    fleet = SimulatedFleet(DEMO_REGIONS, primary_region=DEMO_REGIONS[0]).start()
    try:
        password = secrets.token_urlsafe(12)
        config_path = write_demo_config(Path(args.data_dir), fleet, args.interval, password)
        # The poller process prints the state changes (to the same terminal) as it makes them.
        runtime = Runtime(load_settings(str(config_path)), poller_process=True)
        try:
            url = runtime.start(args.host, args.port)
        except ServerError as exc:
            print(f"dashboard demo: {exc} (pass --port to choose another)", file=sys.stderr)
            return 2
        script = IncidentScript(fleet, INCIDENT_REGION, step_seconds=args.step_seconds,
                                on_step=lambda what: print(f"           simulator: {what}", flush=True))
        print(f"demo: {len(DEMO_REGIONS)} simulated regions, polled every {args.interval:g} s; "
              f"config and database in {Path(args.data_dir).resolve()}", flush=True)
        print(f"demo: log in as {DEMO_OPERATOR} / {password} to fail a region over (a new password each run)",
              flush=True)
        print(f"demo: open {url} and watch {INCIDENT_REGION} degrade, go down and recover; Ctrl-C to stop",
              flush=True)
        script.start()
        try:
            wait_until_stopped(args.duration)
        finally:
            script.stop()
            runtime.stop()
    finally:
        fleet.stop()
    return 0
