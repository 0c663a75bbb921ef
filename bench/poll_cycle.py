"""Benchmark one poll cycle: 200 regions (distinct ports), each answering after 100 ms.

Prints, side by side in one run: the ideal (one round trip), our Prober (probes only), our whole
cycle (probes + evaluation + SQLite), httpx's own connection pool with all requests at once, and a
sequential baseline. The fleet runs in a separate process so the CPU figures are the poller's own.

    python bench/poll_cycle.py [--regions 200] [--delay 0.1] [--cycles 5] [--sequential-sample 40]

The sequential baseline times `--sequential-sample` requests one after another and scales to the
whole cycle (running all 400 in a row takes over 40 s and says nothing more).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.config import load_settings
from dashboard.demo.simulator import SimulatedFleet
from dashboard.poller import Poller
from dashboard.probes import DEPLOYMENT, HEALTH, Prober, endpoint_url
from dashboard.store import Store


def serve_fleet(regions: int, delay: float, conn) -> None:
    """In a child process: run a fleet whose regions answer after `delay`, send its deployment block."""
    fleet = SimulatedFleet(regions, layout="ports").start()
    for region in fleet.regions:
        fleet.set(region, delay_seconds=delay)
    conn.send(fleet.deployment_block())
    conn.recv()  # wait until told to stop
    fleet.stop()


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _summary(samples: list[tuple[float, float]], probes: int) -> tuple[float, float]:
    walls = [w for w, _ in samples]
    cpus = [c for _, c in samples]
    return statistics.median(walls), statistics.median(cpus) / probes * 1000


def bench_prober(targets, cycles: int, timeout: float) -> list[tuple[float, float]]:
    prober = Prober(timeout_seconds=timeout, max_body_bytes=1024 * 1024, max_connections=4 * len(targets))
    try:
        prober.probe_all(targets)  # warm-up: connections opened once, kept alive after
        results = []
        for _ in range(cycles):
            results.append(_timed(lambda: _check(prober.probe_all(targets))))
        return results
    finally:
        prober.close()


def _check(results) -> None:
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} probes failed, e.g. {failed[0].reason}")


def bench_whole_cycle(block: dict, cycles: int, timeout: float) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump({"deployment": block, "dashboard": {
            "database": "bench.db", "timeout_seconds": timeout, "poll_interval_seconds": 15}}))
        settings = load_settings(str(path), environ={})
        store = Store(settings.database_path)
        poller = Poller(settings, store)
        try:
            poller.run_cycle()
            return [_timed(poller.run_cycle) for _ in range(cycles)]
        finally:
            poller.close()
            store.close()


def bench_httpx_pool(urls: list[str], cycles: int, timeout: float) -> list[tuple[float, float]]:
    """httpx's own pool, all requests at once (encode/httpx#3215); errors counted, not raised."""
    errors = []

    async def main() -> list[tuple[float, float]]:
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1000)) as client:
            async def one_cycle() -> None:
                responses = await asyncio.gather(*(client.get(u) for u in urls), return_exceptions=True)
                errors.append(sum(not isinstance(r, httpx.Response) or r.status_code != 200 for r in responses))

            await one_cycle()
            results = []
            for _ in range(cycles):
                wall, cpu = time.perf_counter(), time.process_time()
                await one_cycle()
                results.append((time.perf_counter() - wall, time.process_time() - cpu))
            return results

    results = asyncio.run(main())
    if any(errors):
        print(f"note: httpx pool baseline: {max(errors)} of {len(urls)} requests failed in its worst cycle")
    return results


def bench_sequential(urls: list[str], sample: int, timeout: float) -> tuple[float, float]:
    with httpx.Client(timeout=timeout) as client:
        client.get(urls[0])
        wall, cpu = time.perf_counter(), time.process_time()
        for url in urls[:sample]:
            client.get(url).raise_for_status()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scale = len(urls) / sample
    return wall * scale, cpu / sample * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds each region takes to answer")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--sequential-sample", type=int, default=40)
    parser.add_argument("--skip-httpx-pool", action="store_true", help="skip the slow httpx-pool baseline")
    args = parser.parse_args()
    if args.regions < 1 or args.cycles < 1 or args.sequential_sample < 1:
        parser.error("--regions, --cycles and --sequential-sample must be at least 1")

    parent, child = mp.Pipe()
    server = mp.Process(target=serve_fleet, args=(args.regions, args.delay, child), daemon=True)
    server.start()
    block = parent.recv()
    try:
        urls = block["region_base_urls"]
        targets = [(region, urls[region]) for region in block["regions"]]
        all_urls = [endpoint_url(base, ep) for _, base in targets for ep in (HEALTH, DEPLOYMENT)]
        probes = len(all_urls)
        timeout = 10.0
        rows = [("ideal (one round trip)", args.delay, None)]
        rows.append(("Prober, probes only", *_summary(bench_prober(targets, args.cycles, timeout), probes)))
        rows.append(("Poller.run_cycle (probes + SQLite)",
                     *_summary(bench_whole_cycle(block, args.cycles, timeout), probes)))
        if not args.skip_httpx_pool:
            rows.append(("baseline: httpx pool, all at once",
                         *_summary(bench_httpx_pool(all_urls, min(args.cycles, 3), timeout), probes)))
        rows.append((f"baseline: sequential (x{probes / args.sequential_sample:g} of {args.sequential_sample})",
                     *bench_sequential(all_urls, args.sequential_sample, timeout)))
    finally:
        parent.send("stop")
        server.join(timeout=10)

    print(f"poll cycle: {args.regions} regions x 2 endpoints = {probes} probes, each answering after "
          f"{args.delay * 1000:.0f} ms; median of {args.cycles} cycles")
    print(f"{'layout':<44} {'wall per cycle':>15} {'CPU per probe':>14}")
    for name, wall, cpu in rows:
        cpu_text = "-" if cpu is None else f"{cpu:.2f} ms"
        print(f"{name:<44} {wall:>13.3f} s {cpu_text:>14}")
    print("target: wall <= 0.5 s and CPU <= 1 ms per probe (Poller.run_cycle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
