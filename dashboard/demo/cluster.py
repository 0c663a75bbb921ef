"""`dashboard cluster-demo`: a cluster on one machine, for people (and its own test).

Three etcd members (Debian's etcd-server), the simulated fleet, and three dashboard instances
(`dashboard serve`, one per simulated region), each on its own port, with its own database and
routing file, probing from its own loopback address (127.0.0.11-13) so the fleet can partition one
vantage point. Everything lives in one data folder; Ctrl-C (or --duration) stops it all.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from werkzeug.security import generate_password_hash

from .etcd_local import EtcdCluster, etcd_binary
from .simulator import SimulatedFleet

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
OPERATOR = "oncall"


def source_address(index: int) -> str:
    return f"127.0.0.{11 + index}"


def write_instance_config(folder: Path, fleet: SimulatedFleet, region: str, index: int, endpoints: list[str],
                          interval: float, password_hash: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    config = {
        "deployment": {**fleet.deployment_block(), "region": region},
        "dashboard": {
            "database": "dashboard.db", "routing_file": "routing.json",
            "poll_interval_seconds": interval, "timeout_seconds": min(2.0, interval / 2),
            "auth": {"operators": {OPERATOR: password_hash}},
            "probe_source_address": source_address(index),
            "cluster": {"etcd_endpoints": endpoints, "key_prefix": "/cluster-demo/"},
        },
    }
    path.write_text("# written by `dashboard cluster-demo`; the ports change every run\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _serve(config: Path, host: str, port: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    with open(log, "a", encoding="utf-8") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dashboard.cli", "serve", "--config", str(config), "--host", host, "--port",
             str(port)], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("dashboard: serving "):
        process.kill()
        raise RuntimeError(f"dashboard serve did not start (see {log}): {line.strip()}")
    return process, line.split()[2]


def run_cluster_demo(args: argparse.Namespace) -> int:
    from ..web.server import wait_until_stopped

    binary = etcd_binary()
    if binary is None:
        print("dashboard cluster-demo: etcd not found; install Debian's etcd-server (apt-get install etcd-server)",
              file=sys.stderr)
        return 2
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # A fresh cluster every run (etcd and instances alike): the members' stored peer addresses, and
    # the instances' copies of the routing table, are those of the last run.
    for folder in ["etcd", *REGIONS]:
        shutil.rmtree(data / folder, ignore_errors=True)
    password = secrets.token_urlsafe(12)
    password_hash = generate_password_hash(password)
    processes: list[subprocess.Popen[str]] = []
    with SimulatedFleet(REGIONS, primary_region=REGIONS[0]) as fleet, \
            EtcdCluster(data / "etcd", size=3, binary=binary) as etcd:
        try:
            urls = []
            for index, region in enumerate(REGIONS):
                config = write_instance_config(data / region, fleet, region, index, etcd.endpoints, args.interval,
                                               password_hash)
                port = 0 if args.port == 0 else args.port + index
                process, url = _serve(config, args.host, port, data / region / "serve.log")
                processes.append(process)
                urls.append(url)
                print(f"cluster-demo: {region:<15} {url}  (pid {process.pid}, probes from {source_address(index)})",
                      flush=True)
            print(f"cluster-demo: etcd members {', '.join(etcd.endpoints)} (pids "
                  f"{', '.join(str(m.process.pid) for m in etcd.members if m.process)})", flush=True)
            print(f"cluster-demo: simulated fleet control {fleet.control_url}", flush=True)
            print(f"cluster-demo: log in as {OPERATOR} / {password}; data in {data}; Ctrl-C to stop", flush=True)
            print("cluster-demo: ready", flush=True)
            wait_until_stopped(args.duration)
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGINT)
            for process in processes:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)
                if process.stdout is not None:
                    process.stdout.close()
    return 0
