"""The scheduler wiring: cycles every interval, one at a time, a standby while another polls."""
from __future__ import annotations

import logging
import sqlite3
import time

from dashboard.poller import Poller
from dashboard.scheduler import PollingService
from dashboard.store import Store

from .conftest import wait_until


def test_service_polls_every_interval_and_releases_the_lease_on_stop(fleet, poller_for):
    poller = poller_for(fleet)
    reports = []
    service = PollingService(poller, on_cycle=reports.append)
    service.start()
    service.start()  # a second start (a reloader, a double call) adds nothing
    try:
        assert [job.id for job in service._scheduler.get_jobs()] == ["poll-cycle", "history-maintenance"]
        wait_until(lambda: len(reports) >= 2, "two cycles reported")
        assert service.last_cycle_finished_at is not None
        assert reports[0].regions and all(r.state == "up" for r in reports[-1].regions)
    finally:
        service.stop()
    assert not service.running
    assert poller.store.db.conn.execute("select count(*) from poller_lease").fetchone()[0] == 0


def test_second_service_on_the_same_database_stands_by_without_polling(fleet, make_settings):
    settings = make_settings(fleet)
    stores = [Store(settings.database_path), Store(settings.database_path)]
    first, second = Poller(settings, stores[0]), Poller(settings, stores[1])
    second.holder = "other-host:1"
    try:
        assert first.run_cycle().regions
        before = fleet.request_count("eu-west-1")
        standby = PollingService(second)
        assert standby.run_once() is None
        assert "another poller" in standby.standby_reason
        assert fleet.request_count("eu-west-1") == before
    finally:
        for poller, store in zip((first, second), stores, strict=True):
            poller.close()
            store.close()


def test_an_overrunning_cycle_is_logged_and_not_stacked(fleet, make_settings, caplog):
    settings = make_settings(fleet)
    store = Store(settings.database_path)
    poller = Poller(settings, store)
    poller.run_cycle()
    caplog.set_level(logging.INFO, logger="dashboard")
    caplog.set_level(logging.WARNING, logger="apscheduler")
    blocker = sqlite3.connect(str(settings.database_path), isolation_level=None)
    service = PollingService(poller)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the next write waits: the cycle outlasts its interval
        service.start()
        time.sleep(2.5)
        blocker.execute("ROLLBACK")
        wait_until(lambda: service.last_report is not None and service.last_report.stored, "a stored cycle")
    finally:
        service.stop()
        blocker.close()
        poller.close()
        store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("event=cycle_overrun" in m for m in messages), messages
    assert any("event=cycle_skipped" in m for m in messages), messages


def test_a_cycle_that_raises_does_not_stop_the_scheduler(fleet, poller_for):
    poller = poller_for(fleet)
    service = PollingService(poller)
    poller.store.close()
    poller.store.path.unlink()  # the database vanishes under the poller
    poller.store.path.mkdir()  # ...and a folder stands where the file was
    assert service.run_once() is None
    assert service.last_error is not None
