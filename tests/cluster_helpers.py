"""A cluster of dashboards on one machine, for the cluster tests: real etcd members (etcd_helpers),
the simulated fleet, and one `dashboard serve` process per region, each with its own config, SQLite
and routing file, all sharing the etcd cluster. An instance can be stopped, killed (SIGKILL) and
started again on its own data, as in a real region.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from dashboard.demo.simulator import SimulatedFleet
from dashboard.processes import stop_process

from .routing_helpers import BEARER, auth_config

START_TIMEOUT_SECONDS = 30.0


class Instance:
    """One dashboard instance (`dashboard serve`) of the cluster, in its own folder."""

    def __init__(self, directory: Path, fleet: SimulatedFleet, region: str, endpoints: list[str],
                 code: Path | None = None, **dashboard: Any) -> None:
        self.directory = directory
        self.code = code  # run the `dashboard` package of this checkout (bench/cluster.py's baseline)
        self.region = region
        self.config = directory / "config.yaml"
        self.log = directory / "serve.log"
        self.routing_file = directory / "routing.json"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        directory.mkdir(parents=True, exist_ok=True)
        deployment = {**fleet.deployment_block(), "region": region}
        values = {"database": "dashboard.db", "routing_file": "routing.json", "poll_interval_seconds": 1,
                  "timeout_seconds": 0.5, "auth": auth_config(),
                  # The tests fail regions on purpose: those polls must not leave a region degraded
                  # by its error rate for the next test.
                  "degraded_error_rate": 1.0,
                  "cluster": {"etcd_endpoints": endpoints, "key_prefix": "/test-cluster/"}, **dashboard}
        self.config.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": values}), encoding="utf-8")

    def start(self) -> Instance:
        env = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD_CONFIG", "REVERSEAI_DEPLOYMENT_REGIONS")}
        if self.code is not None:  # `-m` imports from the working folder first, then PYTHONPATH
            env["PYTHONPATH"] = str(self.code)
        with open(self.log, "a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dashboard.cli", "serve", "--config", str(self.config), "--port", "0"],
                stdout=subprocess.PIPE, stderr=log, text=True, env=env, stdin=subprocess.DEVNULL,
                cwd=self.code, start_new_session=True)  # its own process group: kill() takes its poller too
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("dashboard: serving "), (line, self.log.read_text())
        self.url = line.split()[2].rstrip("/")
        return self

    def stop(self, sig: int = signal.SIGINT) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process, sig, timeout=15)
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """SIGKILL the instance and its poller process at once, as when its host dies."""
        process, self.process = self.process, None
        if process is None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def json(self, path: str) -> Any:
        answer = self.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def send(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.request(method, self.url + path, json=body, headers=BEARER, timeout=15)

    def states(self) -> dict[str, str]:
        return {r["region"]: r["state"] for r in self.json("/api/v1/status")["regions"]}

    def routing_file_version(self) -> int | None:
        try:
            return int(json.loads(self.routing_file.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return None
