"""The `dashboard` command line.

Exit codes: 0 every region up (or the command succeeded), 1 some region is not up, 2 usage or
configuration error, 3 another poller holds this database.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from .cluster import (
    EtcdControl,
    Leadership,
    Vantages,
    cluster_for,
    cluster_step,
    control_for,
    record_break_glass,
)
from .config import ConfigError, Settings, effective_config, load_settings
from .console import print_regions, print_routing, print_transitions
from .logs import configure_logging
from .model import UP, CycleReport, RegionReport
from .poller import Poller, PollerBusy
from .status import current_status
from .store import Store
from .text import one_line
from .validate import cmd_validate

if TYPE_CHECKING:
    from .routing import Router

log = logging.getLogger(__name__)
EXIT_OK, EXIT_NOT_UP, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
MAX_SEED_DAYS = 400


def _config_parent() -> argparse.ArgumentParser:
    # --config is accepted before or after the command name: `dashboard --config x status` and
    # `dashboard status --config x` both work. SUPPRESS keeps the sub-parser from overwriting it.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $DASHBOARD_CONFIG, else ./config.yaml)")
    parent.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override dashboard.log_level")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parent = _config_parent()
    parser = argparse.ArgumentParser(
        prog="dashboard", parents=[parent],
        description="Multi-region health dashboard: poll regions, show their state, fail them over.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    poll = sub.add_parser("poll", parents=[parent], help="poll every region (once, or every interval)")
    poll.add_argument("--once", action="store_true", help="run one cycle, print the table and exit")
    poll.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = sub.add_parser("status", parents=[parent], help="print the stored state without polling")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = sub.add_parser("check-config", parents=[parent],
                           help="print the effective config (defaults filled, env applied, secrets masked)")
    check.add_argument("--json", action="store_true", help="print JSON instead of YAML")

    failover = sub.add_parser("failover", parents=[parent],
                              help="send a region's new traffic to another region (default: the primary)")
    failover.add_argument("region")
    failover.add_argument("--to", dest="target", metavar="REGION", help="target region (default: primary_region)")
    failover.add_argument("--reason", required=True, help="why, for the audit trail (required)")
    failover.add_argument("--no-read-only", dest="read_only", action="store_false",
                          help="keep the region's existing sessions writable (default: read-only)")
    failover.add_argument("--expires", type=_duration_minutes, metavar="DURATION",
                          help="lapse by itself after e.g. 30m, 2h, 1d")
    failover.add_argument("--confirm-healthy", action="store_true", help="allow overriding a region that is up")
    failover.add_argument("--force", action="store_true",
                          help="break glass: skip the health rules (never the structural ones); recorded")
    failover.add_argument("--actor", help="name recorded in the audit trail (default: your OS user)")
    failover.add_argument("--json", action="store_true", help="print the new routing table as JSON")
    failover.add_argument("--local", action="store_true",
                          help="cluster mode, cluster unreachable: break glass, change this instance's published "
                               "routing only (recorded here; superseded by the cluster's table when it returns)")

    failback = sub.add_parser("failback", parents=[parent], help="clear a region's routing override")
    failback.add_argument("region")
    failback.add_argument("--reason", required=True, help="why, for the audit trail (required)")
    failback.add_argument("--actor", help="name recorded in the audit trail (default: your OS user)")
    failback.add_argument("--json", action="store_true", help="print the new routing table as JSON")
    failback.add_argument("--local", action="store_true", help="like failover --local: this instance only")

    maint = sub.add_parser("maintenance", parents=[parent],
                           help="maintenance windows: planned work whose state notices wait for its end")
    maint_sub = maint.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    maint_start = maint_sub.add_parser("start", parents=[parent],
                                       help="start (or plan) a window; extends the region's open window")
    maint_start.add_argument("region")
    maint_start.add_argument("--for", dest="duration", type=_window_minutes, required=True, metavar="DURATION",
                             help="how long, e.g. 45m, 2h (at most dashboard.maintenance.max_hours)")
    maint_start.add_argument("--reason", required=True, help="why, for the audit trail (required)")
    maint_start.add_argument("--starts-in", type=_window_minutes, metavar="DURATION",
                             help="plan it to start later, e.g. 30m (default: now)")
    maint_start.add_argument("--actor", help="name recorded in the audit trail (default: your OS user)")
    maint_start.add_argument("--json", action="store_true", help="print the window as JSON")
    maint_end = maint_sub.add_parser("end", parents=[parent], help="end a region's maintenance window now")
    maint_end.add_argument("region")
    maint_end.add_argument("--reason", help="why, for the audit trail")
    maint_end.add_argument("--actor", help="name recorded in the audit trail (default: your OS user)")
    maint_end.add_argument("--json", action="store_true", help="print the window as JSON")
    maint_list = maint_sub.add_parser("list", parents=[parent], help="windows not over yet")
    maint_list.add_argument("--json", action="store_true", help="print JSON instead of a table")

    routing_cmd = sub.add_parser("routing", parents=[parent], help="print the effective routing table")
    routing_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")

    hashing = sub.add_parser("hash-password", parents=[parent],
                             help="hash a password or API token for dashboard.auth (reads stdin when piped)")
    hashing.add_argument("--new-token", action="store_true",
                         help="generate a random API token, print it once and its hash")

    validate = sub.add_parser("validate", parents=[parent],
                              help="check a region end to end before or after a rollout (exit 1 on any failure)")
    validate.add_argument("region", help="region to check; needs a base URL in deployment.region_base_urls")
    validate.add_argument("--json", action="store_true", help="print JSON instead of one line per check")

    seed = sub.add_parser("seed-history", parents=[parent],
                          help="load synthetic history (polls, incidents, rollouts) for benchmarks and demos")
    seed.add_argument("--days", type=float, default=30.0, help="days of history ending now (default 30)")
    seed.add_argument("--regions", type=int, default=None,
                      help="how many regions: the first N configured ones, or N new ones with --write-config")
    seed.add_argument("--write-config", metavar="DIR",
                      help="write a fresh config.yaml and database for --regions N regions in DIR and seed it")
    seed.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same history)")

    serve = sub.add_parser("serve", parents=[parent], help="run the web dashboard and the poller")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000)")

    demo = sub.add_parser("demo", parents=[parent],
                          help="run against a simulated fleet with a scripted incident (no config needed)")
    demo.add_argument("--data-dir", default="demo-data", help="folder for the demo's config and database")
    demo.add_argument("--interval", type=float, default=5.0, help="poll interval in seconds (default 5)")
    demo.add_argument("--step-seconds", type=float, default=10.0, help="seconds between incident steps")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 = any free)")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    cdemo = sub.add_parser("cluster-demo", parents=[parent],
                           help="three etcd members, three dashboards and the simulated fleet, on this machine")
    cdemo.add_argument("--data-dir", default="cluster-demo-data", help="folder for configs, databases and etcd data")
    cdemo.add_argument("--interval", type=float, default=2.0, help="poll interval in seconds (default 2)")
    cdemo.add_argument("--host", default="127.0.0.1", help="address the instances listen on (default 127.0.0.1)")
    cdemo.add_argument("--port", type=_port, default=8001,
                       help="the first instance's port; the others take the next ones (default 8001; 0 = any free)")
    cdemo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def _minutes(text: str) -> float:
    """'45m', '2h', '1d' or plain minutes, as minutes (argparse's error when it is none of them)."""
    units = {"m": 1, "h": 60, "d": 1440}
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "m")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 2h, 1d)") from None


def _duration_minutes(text: str) -> float:
    """An override's expiry: between 1 minute and 7 days."""
    minutes = _minutes(text)
    if not 1 <= minutes <= 7 * 1440:
        raise argparse.ArgumentTypeError(f"duration must be between 1m and 7d (got {text!r})")
    return minutes


def _window_minutes(text: str) -> float:
    """A maintenance window's length or delay: more than 0 (the settings bound the length)."""
    minutes = _minutes(text)
    if not minutes > 0 or minutes != minutes or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"the duration must be more than 0 (got {text!r})")
    return minutes


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535 (got {port})")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", "WARNING"))
    try:
        if args.command == "demo":
            from .demo.run import run_demo

            return run_demo(args)
        if args.command == "cluster-demo":
            from .demo.cluster import run_cluster_demo

            return run_cluster_demo(args)
        if args.command == "hash-password":
            return cmd_hash_password(args)
        if args.command == "seed-history" and args.write_config:
            return cmd_seed_history(_seed_fleet_settings(args), args)
        settings = load_settings(getattr(args, "config", None))
        configure_logging(getattr(args, "log_level", settings.dashboard.log_level), settings.dashboard.log_format)
        handler = COMMANDS[args.command]
        return handler(settings, args)
    except ConfigError as exc:
        print(f"dashboard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    data = effective_config(settings)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"# effective configuration from {settings.source}")
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(settings.database_path)
    control, vantages = cluster_for(settings, store)
    poller = Poller(settings, store, control=control)
    try:
        if args.once:
            try:
                report = poller.run_cycle()
            except PollerBusy as busy:
                print(f"dashboard: {busy}", file=sys.stderr)
                return EXIT_BUSY
            finally:
                poller.release_lease()
            print_regions(report.regions, args.json, note=report.note)
            return _exit_for(report.regions)
        return _poll_forever(poller, args, vantages)
    finally:
        poller.close()
        store.close()


def _poll_forever(poller: Poller, args: argparse.Namespace, vantages: Vantages | None = None) -> int:
    """Poll every interval until Ctrl-C or SIGTERM (how `serve` stops its poller process).

    This process does everything the poll loop owns: probing, the heartbeat the web process reads,
    delivering every notice in the outbox, lapsing overrides and retrying publishers."""
    import signal
    import threading

    from .heartbeat import write_polling_metrics
    from .maintenance import Maintenance
    from .metrics import PollingMetrics
    from .notify import Notifier
    from .routing import Router
    from .scheduler import PollingService

    notifier = Notifier(poller.settings, store=poller.store, maintenance=poller.control)
    # Probe latency and outcomes are observed here; `serve`'s /metrics serves what is left in the
    # database after each cycle (this process serves no HTTP).
    polling_metrics = PollingMetrics(poller.settings)

    leadership = Leadership(poller.settings, vantages.etcd) if vantages is not None else None

    def on_cycle(report: CycleReport) -> None:
        if vantages is not None and leadership is not None:
            # Cluster mode: this vantage point's verdicts, under its lease; the notices are of the
            # agreed states, sent by the leader alone (once cluster-wide). SLO alerts are each
            # instance's own view: the leader's are the ones announced.
            notifier.state_changes(cluster_step(vantages, leadership, poller.control))
            if leadership.is_leader:
                notifier.slo_alerts_changed(report.slo_changes)
        else:
            notifier.state_changes(report.transitions)
            notifier.slo_alerts_changed(report.slo_changes)
        polling_metrics.observe_cycle(report)
        try:
            write_polling_metrics(poller.store, polling_metrics.exposition())
        except sqlite3.Error as exc:  # the next cycle writes them again
            log.warning("event=polling_metrics_not_stored error=%r", str(exc))
        print_transitions(report.transitions)

    router = Router(poller.settings, poller.store, control=poller.control, notifier=notifier,
                    cluster_states=None if vantages is None else vantages.for_rules)
    maintenance = Maintenance(poller.settings, poller.store, control=poller.control, listener=notifier)
    if leadership is not None:
        # Override expiry and the end of windows are the leader's work (compare-and-set kept).
        router.lapses_here = maintenance.lapses_here = lambda: leadership.is_leader
    service = PollingService(poller, on_cycle=on_cycle, router=router, heartbeat=True, maintenance=maintenance)
    stop_watch: Callable[[], None] | None = None
    if isinstance(poller.control, EtcdControl):
        # Cluster mode: this instance publishes every change of the cluster's table as it happens
        # (a broken watch resumes from the revision it last saw; the scheduler's once-a-second
        # retry stays as the last resort), then copies it into its own database.
        router.on_applied = poller.control.report_applied
        control = poller.control

        def table_changed() -> None:
            try:
                control.publish_then_copy(lambda snap: router.retry_publishers(snapshot=snap))
            except Exception:
                log.exception("event=watch_publish_failed")

        stop_watch = control.watch_routing(table_changed)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    notifier.start()
    if leadership is not None:
        leadership.start()
    service.start()
    print(f"polling {len(poller.settings.regions)} regions every "
          f"{poller.settings.dashboard.poll_interval_seconds:g} s; Ctrl-C to stop", file=sys.stderr)
    # Started by `serve` (supervisor.SUPERVISOR_ENV): stop when it is gone, never poll orphaned.
    supervisor = int(os.environ.get("DASHBOARD_SUPERVISOR_PID", "0") or 0)
    try:
        while not stopping.wait(1.0):
            if supervisor and os.getppid() != supervisor:
                print("dashboard poll: the serving process is gone; stopping", file=sys.stderr)
                break
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if leadership is not None:
            leadership.stop()
        if stop_watch is not None:
            stop_watch()
        service.stop()
        if vantages is not None:
            vantages.withdraw()
        notifier.stop(timeout=5)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .runtime import Runtime
    from .web.server import ServerError, wait_until_stopped

    runtime = Runtime(settings, poller_process=True)
    try:
        url = runtime.start(args.host, args.port)
    except ServerError as exc:
        print(f"dashboard serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"dashboard: serving {url} ; polling {len(settings.regions)} regions every "
          f"{settings.dashboard.poll_interval_seconds:g} s in a separate poller process; Ctrl-C to stop",
          flush=True)
    try:
        wait_until_stopped(None)
    finally:
        runtime.stop()
    return EXIT_OK


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _routing_change(settings: Settings, args: argparse.Namespace,
                    act: Callable[[Router, str], dict[str, Any]]) -> int:
    from .notify import Notifier
    from .routing import Router, RoutingError

    if args.local and settings.cluster is None:
        print(f"dashboard {args.command}: --local is the break-glass path of cluster mode (dashboard.cluster); "
              "standalone, every change is local already: drop --local", file=sys.stderr)
        return EXIT_USAGE

    store = Store(settings.database_path)
    # The notice is in the outbox once the change is committed. This process delivers it before
    # returning if it can within the timeout; what it cannot, stays there for a running server.
    notifier = Notifier(settings, store=store, scope="own")
    notifier.start()
    try:
        if args.local:
            # Break glass: this instance's own copy of the table, its own view of the regions.
            router = Router(settings, store, control=store, notifier=notifier)
        else:
            control, vantages = cluster_for(settings, store)
            router = Router(settings, store, control=control, notifier=notifier,
                            cluster_states=None if vantages is None else vantages.for_rules)
        actor = args.actor or f"cli:{_os_user()}"
        table = act(router, actor)
        if args.local:
            record_break_glass(store, actor, f"{args.command} {args.region}", table["version"])
        published = router.published(table["version"])
    except RoutingError as refused:
        print(f"dashboard {args.command}: refused ({refused.rule}): {one_line(refused.message)}", file=sys.stderr)
        return EXIT_NOT_UP if refused.status == 409 else EXIT_USAGE
    finally:
        notifier.stop(timeout=10)
        store.close()
    print_routing(table, args.json)
    # The change is made either way; a router that did not take it is retried by `dashboard serve`.
    _print_publish_problems(args.command, published, "the change is made; `dashboard serve` retries it")
    return EXIT_OK


def _print_publish_problems(command: str, published: list[dict[str, Any]], then: str) -> bool:
    """Say on stderr which publishers did not apply the table; True when any did not."""
    problems = [p for p in published if p["behind"] or p["error"]]
    for p in problems:
        print(f"dashboard {command}: publisher {p['name']} ({p['type']}) did not apply the table: "
              f"{one_line(p['error'] or 'not applied yet')}; {then}", file=sys.stderr)
    return bool(problems)


def cmd_failover(settings: Settings, args: argparse.Namespace) -> int:
    from .routing import Change

    change = Change(region=args.region, target_region=args.target, read_only=args.read_only, reason=args.reason,
                    expires_in_minutes=args.expires, confirm_healthy=args.confirm_healthy, force=args.force)
    return _routing_change(settings, args, lambda router, actor: router.set_override(change, actor=actor))


def cmd_failback(settings: Settings, args: argparse.Namespace) -> int:
    return _routing_change(settings, args,
                           lambda router, actor: router.clear_override(args.region, reason=args.reason, actor=actor))


def cmd_maintenance(settings: Settings, args: argparse.Namespace) -> int:
    """`dashboard maintenance start|end|list`: the same windows, rules and audit as the page and API."""
    import time

    from .maintenance import Maintenance, public_window
    from .notify import Notifier
    from .routing import RoutingError

    store = Store(settings.database_path)
    control = control_for(settings, store)  # in cluster mode the windows are the cluster's
    # an ended window's summary, delivered here
    notifier = Notifier(settings, store=store, scope="own", maintenance=control)
    notifier.start()
    try:
        maintenance = Maintenance(settings, store, control=control, listener=notifier)
        maintenance.lapse_expired()
        actor = getattr(args, "actor", None) or f"cli:{_os_user()}"
        if args.maintenance_command == "list":
            windows = [public_window(w) for w in maintenance.windows()]
            if args.json:
                print(json.dumps({"windows": windows}, indent=2))
            elif not windows:
                print("no maintenance window open or planned")
            else:
                for w in windows:
                    print(f"{w['id']:>4}  {w['region']:<20} {'ACTIVE ' if w['active'] else 'planned'} "
                          f"{w['starts_at']} -> {w['ends_at']}  by {one_line(w['actor'])}: {one_line(w['reason'])}")
            return EXIT_OK
        if args.maintenance_command == "start":
            starts_at = time.time() + args.starts_in * 60 if args.starts_in else None
            started = maintenance.start(args.region, reason=args.reason, actor=actor, duration_minutes=args.duration,
                                        starts_at=starts_at)
            window, verb = started.window, "extended" if started.extended else "started"
            if window["starts_at"] > time.time():
                verb = "planned"
        else:
            window, verb = maintenance.end(region=args.region, reason=args.reason, actor=actor), "ended"
    except RoutingError as refused:
        print(f"dashboard maintenance {args.maintenance_command}: refused ({refused.rule}): "
              f"{one_line(refused.message)}", file=sys.stderr)
        return EXIT_NOT_UP if refused.status == 409 else EXIT_USAGE
    finally:
        notifier.stop(timeout=10)
        store.close()
    shown = public_window(window)
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        print(f"maintenance window {shown['id']} of {shown['region']} {verb}: {shown['starts_at']} -> "
              f"{shown['ended_at'] or shown['ends_at']} ({one_line(shown['reason'])}, by {one_line(shown['actor'])})")
    return EXIT_OK


def cmd_routing(settings: Settings, args: argparse.Namespace) -> int:
    from .routing import Router

    store = Store(settings.database_path)
    try:
        router = Router(settings, store, control=control_for(settings, store))
        router.lapse_expired()
        table = router.publish()
        published = router.published(table["version"])
    finally:
        store.close()
    print_routing(table, args.json)
    if _print_publish_problems(args.command, published, "run `dashboard routing` again once it is fixed"):
        return EXIT_NOT_UP
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass
    import secrets

    from werkzeug.security import generate_password_hash

    if args.new_token:
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the automation, it is not shown again): {token}", file=sys.stderr)
        # 256 random bits need no slow hash: a fast one keeps every API call (and every wrong
        # token someone throws at the server) cheap, where scrypt costs ~170 ms a check here.
        print(generate_password_hash(token, method="pbkdf2:sha256:1000"))
        return EXIT_OK
    if sys.stdin.isatty():
        secret = getpass.getpass("password: ")
        if secret != getpass.getpass("again: "):
            print("dashboard hash-password: the two entries differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if len(secret) < 8:
        print("dashboard hash-password: use at least 8 characters", file=sys.stderr)
        return EXIT_USAGE
    print(generate_password_hash(secret))
    return EXIT_OK


# Where a seeded fleet "lives": loopback port 0, where no process can listen, so the kernel refuses
# every connection at once (no timeout, nothing sent off the machine). Not a history-only flag:
# serving the seeded database then runs exactly what a real deployment runs, poller included.
HISTORY_ONLY_BASE_URL = "http://127.0.0.1:0"


def _seed_fleet_settings(args: argparse.Namespace) -> Settings:
    """A new config for N synthetic regions (nothing answers at their addresses: history only)."""
    from pathlib import Path

    from .config import DEFAULT_CONFIG_FILE

    count = 3 if args.regions is None else args.regions
    if not 1 <= count <= 1000:
        raise ConfigError([f"--regions: must be between 1 and 1000 (got {count})"])
    if not 0 < args.days <= MAX_SEED_DAYS:
        raise ConfigError([f"--days: must be more than 0 and at most {MAX_SEED_DAYS} (got {args.days:g})"])
    folder = Path(args.write_config)
    if (folder / DEFAULT_CONFIG_FILE).exists():
        raise ConfigError([f"--write-config: {folder / DEFAULT_CONFIG_FILE} exists; choose a new folder"])
    folder.mkdir(parents=True, exist_ok=True)
    regions = [f"region-{i:03d}" for i in range(count)]
    config = {
        "deployment": {"region": regions[0], "primary_region": regions[0], "regions": regions,
                       "region_base_urls": {r: f"{HISTORY_ONLY_BASE_URL}/{r}" for r in regions}},
        "dashboard": {"database": "dashboard.db", "routing_file": "routing.json"},
    }
    path = folder / DEFAULT_CONFIG_FILE
    path.write_text("# written by `dashboard seed-history --write-config`: a history-only fleet.\n"
                    f"# Nothing answers at {HISTORY_ONLY_BASE_URL}: `serve` polls it, every probe is refused at\n"
                    "# once and never leaves this machine, and the regions turn down after a few polls.\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return load_settings(str(path), environ={})


def cmd_seed_history(settings: Settings, args: argparse.Namespace) -> int:
    from .demo.seed import seed_history
    from .history import retention_step, rollup_step

    if not 0 < args.days <= MAX_SEED_DAYS:
        print(f"dashboard seed-history: --days must be more than 0 and at most {MAX_SEED_DAYS}", file=sys.stderr)
        return EXIT_USAGE
    if args.regions is not None and not args.write_config:
        if not 1 <= args.regions <= len(settings.regions):
            print(f"dashboard seed-history: --regions must be between 1 and {len(settings.regions)}, the number "
                  "of configured regions (or use --write-config DIR for a new fleet of any size)", file=sys.stderr)
            return EXIT_USAGE
        deployment = settings.deployment.model_copy(update={"regions": settings.regions[:args.regions]})
        settings = settings.model_copy(update={"deployment": deployment})
    store = Store(settings.database_path)
    try:
        print(f"seeding {args.days:g} days of {len(settings.regions)} regions into {settings.database_path}",
              file=sys.stderr)
        summary = seed_history(store, settings, days=args.days, rng_seed=args.seed)
        print(f"wrote {summary.samples} samples and {summary.events} events in {summary.seconds:.1f} s; "
              "rolling up", file=sys.stderr)
        while rollup_step(store, max_transactions=200):
            pass
        while retention_step(store, settings, max_transactions=200).samples:
            pass
        store.vacuum()  # give back the space the raw samples past retention took
        print(f"done: database {store.file_bytes() / 1e6:.1f} MB", file=sys.stderr)
    finally:
        store.close()
    if args.write_config:
        print(f"config: {settings.source}")
    return EXIT_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(settings.database_path)
    try:
        control = control_for(settings, store)
        regions = current_status(settings, store, control.routing().overrides,
                                 windows=control.maintenance_windows(open_only=True))
    finally:
        store.close()
    print_regions(regions, args.json)
    return _exit_for(regions)


def _exit_for(regions: list[RegionReport]) -> int:
    return EXIT_OK if regions and all(r.state == UP for r in regions) else EXIT_NOT_UP


COMMANDS = {
    "poll": cmd_poll,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "serve": cmd_serve,
    "failover": cmd_failover,
    "failback": cmd_failback,
    "routing": cmd_routing,
    "maintenance": cmd_maintenance,
    "validate": cmd_validate,
    "seed-history": cmd_seed_history,
}

if __name__ == "__main__":
    sys.exit(main())
