"""`dashboard cluster-demo` starts three etcd members and three instances that find each other."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import wait_until
from .etcd_helpers import require_etcd


def test_the_cluster_demo_starts_three_instances_that_agree_and_stops_them_all(tmp_path: Path) -> None:
    require_etcd()
    demo = subprocess.Popen([sys.executable, "-m", "dashboard.cli", "cluster-demo", "--data-dir", str(tmp_path),
                             "--port", "0", "--interval", "1", "--duration", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert demo.stdout is not None
        lines = []
        while not (lines and lines[-1].startswith("cluster-demo: ready")):
            line = demo.stdout.readline()
            assert line, "\n".join(lines)
            lines.append(line.strip())
        urls = [line.split()[2] for line in lines if line.split()[1] in ("us-east-1", "eu-west-1", "ap-southeast-1")]
        assert len(urls) == 3
        for url in urls:
            report = wait_until(lambda u=url: (r := httpx.get(f"{u}api/v1/cluster", timeout=10).json())["leader"]
                                and sum(m["live"] for m in r["members"]) == 3 and r,
                                f"{url} sees three live members and a leader", timeout=30)
            assert report["mode"] == "cluster"
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(60)
        if demo.stdout is not None:
            demo.stdout.close()
    assert demo.returncode == 0
    # Nothing left running: every etcd member and instance stopped with the demo.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
