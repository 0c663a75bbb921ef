"""The `dashboard` command line.

Exit codes: 0 every region up (or the command succeeded), 1 some region is not up, 2 usage or
configuration error, 3 another poller holds this database.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from . import health
from .config import ConfigError, Settings, effective_config, load_settings
from .poller import Poller, PollerBusy, RegionReport
from .status import current_status
from .store import Store

EXIT_OK, EXIT_NOT_UP, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


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
    return parser


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
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING"),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: hundreds of lines a cycle that say nothing new.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        settings = load_settings(getattr(args, "config", None))
        if hasattr(args, "log_level"):
            logging.getLogger().setLevel(args.log_level)
        else:
            logging.getLogger().setLevel(settings.dashboard.log_level)
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
    poller = Poller(settings, store)
    try:
        if args.once:
            try:
                report = poller.run_cycle()
            except PollerBusy as busy:
                print(f"dashboard: {busy}", file=sys.stderr)
                return EXIT_BUSY
            finally:
                poller.release_lease()
            _print_regions(report.regions, args.json, note=report.note)
            return _exit_for(report.regions)
        return _poll_forever(poller, args)
    finally:
        poller.close()
        store.close()


def _poll_forever(poller: Poller, args: argparse.Namespace) -> int:
    from .scheduler import PollingService

    service = PollingService(poller, on_cycle=lambda report: print_transitions(report.transitions))
    service.start()
    print(f"polling {len(poller.settings.regions)} regions every "
          f"{poller.settings.dashboard.poll_interval_seconds:g} s; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        service.stop()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .scheduler import PollingService
    from .web import create_app
    from .web.server import ServerError, start_server, url_of, wait_until_stopped

    store = Store(settings.database_path)
    poller = Poller(settings, store)
    service = PollingService(poller)
    try:
        server = start_server(create_app(settings, store=store, service=service), args.host, args.port)
    except ServerError as exc:
        print(f"dashboard serve: {exc}", file=sys.stderr)
        poller.close()
        store.close()
        return EXIT_USAGE
    service.start()
    print(f"dashboard: serving {url_of(server, args.host)} ; polling {len(settings.regions)} regions every "
          f"{settings.dashboard.poll_interval_seconds:g} s; Ctrl-C to stop", flush=True)
    try:
        wait_until_stopped(None)
    finally:
        server.close()
        service.stop()
        poller.close()
        store.close()
    return EXIT_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(settings.database_path)
    try:
        regions = current_status(settings, store)
    finally:
        store.close()
    _print_regions(regions, args.json)
    return _exit_for(regions)


def _exit_for(regions: list[RegionReport]) -> int:
    return EXIT_OK if regions and all(r.state == health.UP for r in regions) else EXIT_NOT_UP


def print_transitions(transitions: Sequence[health.Transition]) -> None:
    for t in transitions:
        stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
        print(f"{stamp}  {t.region:<16} {t.old_state:>8} -> {t.new_state:<8}  {t.reason}", flush=True)


def _print_regions(regions: list[RegionReport], as_json: bool, note: str = "") -> None:
    if as_json:
        payload: dict[str, Any] = {"regions": [r.as_dict() for r in regions]}
        if note:
            payload["note"] = note
        print(json.dumps(payload, indent=2))
        return
    print(format_table(regions))
    if note:
        print(f"note: {note}", file=sys.stderr)


def format_table(regions: list[RegionReport]) -> str:
    """A fixed-width table: region, state, latency, error rate, version, reason (with markers)."""
    rows = [("REGION", "STATE", "LATENCY", "ERR RATE", "VERSION", "REASON")]
    for r in regions:
        reason = r.reason
        if r.markers:
            reason += " [" + ", ".join(sorted(r.markers)) + "]"
        rows.append((
            r.region,
            r.state.upper() if r.state != health.UP else r.state,
            "-" if r.latency_ms is None else f"{r.latency_ms:.0f} ms",
            "-" if r.error_rate is None else f"{r.error_rate:.1%}",
            r.version or "-",
            _one_line(reason),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths)) + "  " + row[5] for row in rows
    )


def _one_line(text: str) -> str:
    # Remote text must not be able to forge table rows or terminal escapes.
    return "".join(ch if ch.isprintable() else " " for ch in text)


COMMANDS = {
    "poll": cmd_poll,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "serve": cmd_serve,
}

if __name__ == "__main__":
    sys.exit(main())
