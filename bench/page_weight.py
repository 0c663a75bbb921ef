"""Benchmark page weight and cold-load time (issue 14): what a new viewer's browser transfers and
how long until a region page's charts are drawn, this tree beside a baseline tree, in one run.

    python bench/page_weight.py --baseline-tree /work/wt-coldload-base [--runs 5] [--regions 10] [--days 2]

One database is seeded (`seed_history`, then the scheduler's maintenance until it has caught up)
and copied for each tree. Each tree's app runs in its own process (`PYTHONPATH` = that tree, so
the baseline serves its own code, templates and static files) on waitress on loopback; nobody
polls. Headless Chromium (Debian's, through Playwright) loads the overview and a region page:

- **cold**: a fresh browser context (empty cache, no cookies), one navigation;
- **warm**: the same page again in that context (cached assets, revalidated or not as the app
  says).

Bytes are what went over the wire (Chromium's `encodedDataLength` summed over every request the
page made until its charts were drawn: headers and compressed bodies). Times are from the start of
navigation: for the region page until both charts hold a drawn trace, for the overview until the
load event. Median of `--runs`; the runs alternate between the trees so a noisy neighbour slows
both alike. Times depend on the machine's load; bytes do not.

A baseline tree is a worktree at the commit before the change (`git worktree add PATH SHA`),
run with this tree's virtualenv: `--baseline-tree PATH`. Without it only this tree is measured.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashboard.config import load_settings
from dashboard.demo.seed import seed_history
from dashboard.history import maintenance_step
from dashboard.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INTERVAL_SECONDS = 15.0
GOAL_BYTES = 600_000
GOAL_DRAWN_MS = 1000

# Runs in the tree's own interpreter path: builds that tree's app and serves it until stdin closes.
SERVE = """
import sys
import dashboard
from dashboard.config import load_settings
from dashboard.web import create_app
from dashboard.web.server import start_server, stop_server
app = create_app(load_settings(sys.argv[1], environ={}))
server = start_server(app, "127.0.0.1", 0)
print(f"http://127.0.0.1:{server.effective_port} {dashboard.__file__}", flush=True)
sys.stdin.read()
stop_server(server)
"""

# True (with the time since navigation started) once both charts hold a drawn trace.
CHARTS_DRAWN = """() => {
  const charts = document.querySelectorAll("#charts .chart");
  if (!charts.length) return false;
  for (const c of charts) {
    if (!c._fullData || !c.querySelector(".main-svg g.trace")) return false;
  }
  return performance.now();
}"""
LOADED = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return nav && nav.loadEventEnd > 0 ? nav.loadEventEnd : false;
}"""


@dataclass
class Load:
    bytes: int
    ms: float
    requests: int
    encodings: Counter = field(default_factory=Counter)
    by_url: dict[str, int] = field(default_factory=dict)


class Served:
    """One tree's app in its own process."""

    def __init__(self, name: str, tree: Path, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("DASHBOARD_CONFIG", None)
        self.name = name
        self.process = subprocess.Popen([sys.executable, "-c", SERVE, str(config)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2:
            raise SystemExit(f"{name}: the server did not start")
        self.url, module = line
        if not Path(module).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{name}: imported dashboard from {module}, not from {tree}")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(15)
        if self.process.stdout is not None:
            self.process.stdout.close()


def prepare(folder: Path, regions: list[str], days: float) -> Path:
    """A database with `days` of history for `regions`, maintained as a running poller leaves it."""
    deployment = {"region": regions[0], "primary_region": regions[0], "regions": regions,
                  "region_base_urls": {r: f"http://127.0.0.1:9/{r}" for r in regions}}
    config = folder / "seed.yaml"
    config.write_text(yaml.safe_dump({"deployment": deployment, "dashboard": {
        "database": str(folder / "seed.db"), "poll_interval_seconds": INTERVAL_SECONDS}}), encoding="utf-8")
    settings = load_settings(str(config), environ={})
    store = Store(settings.database_path)
    try:
        started = time.perf_counter()
        summary = seed_history(store, settings, days=days, rng_seed=0)
        while True:
            result = maintenance_step(store, settings)
            if not (result["rolled_up"] or any(vars(result["pruned"]).values()) or result["size_dropped"]):
                break
        print(f"seeded {len(regions)} regions x {days:g} days ({summary.samples:,} samples) and maintained "
              f"in {time.perf_counter() - started:.1f} s")
        store.db.conn.execute("pragma wal_checkpoint(truncate)")
    finally:
        store.close()
    return config


def tree_config(folder: Path, seed_config: Path, name: str) -> Path:
    """A copy of the seeded database and a config naming it, for one tree."""
    data = yaml.safe_load(seed_config.read_text())
    database = folder / f"{name}.db"
    shutil.copyfile(folder / "seed.db", database)
    data["dashboard"]["database"] = str(database)
    data["dashboard"]["routing_file"] = str(folder / f"{name}-routing.json")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def measure(page: Any, cdp: Any, url: str, wait_for: str, seen: dict[str, dict[str, Any]]) -> Load:
    """Navigate and wait for `wait_for`; what went over the wire for it, and when it was reached."""
    seen.clear()
    page.goto(url, wait_until="commit")
    ms = page.wait_for_function(wait_for, polling="raf", timeout=30_000).json_value()
    # Requests still in flight when the charts were drawn (a htmx refresh) are not part of it.
    done = [r for r in seen.values() if "bytes" in r]
    load = Load(sum(r["bytes"] for r in done), float(ms), len(done))
    for r in done:
        load.encodings[r.get("encoding") or "none"] += 1
        load.by_url[r["url"]] = r["bytes"]
    return load


def run_tree(browser: Any, served: Served, pages: dict[str, tuple[str, str]], results: dict) -> None:
    for page_name, (path, wait_for) in pages.items():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            seen: dict[str, dict[str, Any]] = {}

            def on_response(event: dict[str, Any], seen: dict = seen) -> None:
                headers = {k.lower(): v for k, v in event["response"].get("headers", {}).items()}
                seen.setdefault(event["requestId"], {}).update(
                    url=event["response"]["url"], encoding=headers.get("content-encoding"))

            def on_finished(event: dict[str, Any], seen: dict = seen) -> None:
                seen.setdefault(event["requestId"], {"url": "?"})["bytes"] = int(event["encodedDataLength"])

            cdp.on("Network.responseReceived", on_response)
            cdp.on("Network.loadingFinished", on_finished)
            for kind in ("cold", "warm"):
                results.setdefault((served.name, page_name, kind), []).append(
                    measure(page, cdp, served.url + path, wait_for, seen))
        finally:
            context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--days", type=float, default=2.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    regions = [f"region-{i:03d}" for i in range(args.regions)]
    region = regions[min(3, len(regions) - 1)]
    pages = {"overview": ("/", LOADED), "region page": (f"/regions/{region}", CHARTS_DRAWN)}
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline_tree)] if args.baseline_tree else [])
    with tempfile.TemporaryDirectory(prefix="page-weight-") as tmp:
        folder = Path(tmp)
        seed_config = prepare(folder, regions, args.days)
        servers = [Served(name, tree, tree_config(folder, seed_config, name.replace(" ", "-")))
                   for name, tree in trees]
        results: dict[tuple[str, str, str], list[Load]] = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    for server in servers:  # one untimed round: the servers' first requests compile templates
                        run_tree(browser, server, pages, {})
                    for _ in range(args.runs):
                        for server in servers:
                            run_tree(browser, server, pages, results)
                finally:
                    browser.close()
        finally:
            for server in servers:
                server.stop()
    report(results, trees, pages, args.runs, region)


def report(results: dict, trees: list, pages: dict, runs: int, region: str) -> None:
    print(f"\nmedian of {runs} runs; region page = /regions/{region} (1 h window, two charts)\n")
    print("| layout | page | load | transferred | requests | until drawn (region) / loaded (overview) |")
    print("|---|---|---|---|---|---|")
    for name, _ in trees:
        for page_name in pages:
            for kind in ("cold", "warm"):
                loads = results[(name, page_name, kind)]
                kb = statistics.median(load.bytes for load in loads) / 1000
                ms = statistics.median(load.ms for load in loads)
                requests = statistics.median(load.requests for load in loads)
                print(f"| {name} | {page_name} | {kind} | {kb:,.1f} KB | {requests:g} | {ms:,.0f} ms |")
    for name, _ in trees:
        cold = results[(name, "region page", "cold")][-1]
        print(f"\n{name}, cold region page, by request (last run; encodings {dict(cold.encodings)}):")
        for url, size in sorted(cold.by_url.items(), key=lambda item: -item[1]):
            print(f"  {size / 1000:9.1f} KB  {url.split('//', 1)[-1].split('/', 1)[-1][:90]}")
    mine = results[("this tree", "region page", "cold")]
    kb = statistics.median(load.bytes for load in mine)
    ms = statistics.median(load.ms for load in mine)
    print(f"\ngoals: cold region page <= {GOAL_BYTES / 1000:.0f} KB: {kb / 1000:.1f} KB "
          f"({'met' if kb <= GOAL_BYTES else 'MISSED'}); charts drawn <= {GOAL_DRAWN_MS} ms: {ms:.0f} ms "
          f"({'met' if ms <= GOAL_DRAWN_MS else 'MISSED'})")


if __name__ == "__main__":
    main()
