"""The overview of a 200-region fleet in a real browser: problems first, and a filter that stays."""
from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from dashboard.demo.simulator import SimulatedFleet

pytestmark = pytest.mark.browser

REGIONS = 200
# A calmer pace than the other browser tests: 400 probes a cycle on a shared machine.
FLEET_SETTINGS = {"poll_interval_seconds": 2, "timeout_seconds": 1.5}


def _serve_fleet(regions: int, conn: Any) -> None:
    """In a child process: a fleet of `regions`; sends its deployment block and control URL, runs until told."""
    fleet = SimulatedFleet(regions).start()
    conn.send((fleet.deployment_block(), fleet.control_url))
    conn.recv()
    fleet.stop()


class FleetElsewhere:
    """The simulated fleet in its own process, steered through its control API over HTTP.

    In this process its 200 listening sockets and their connections would push waitress's
    select() past the 1024 descriptors it can watch."""

    def __init__(self, regions: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self._conn, child_conn = spawn.Pipe()
        self._process = spawn.Process(target=_serve_fleet, args=(regions, child_conn))
        self._process.start()
        self._block, self.control_url = self._conn.recv()
        self.regions = list(self._block["regions"])

    def deployment_block(self) -> dict[str, Any]:
        return self._block

    def set(self, region: str, **changes: Any) -> None:
        httpx.post(f"{self.control_url}/{region}", json=changes, timeout=10).raise_for_status()

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(30)


@pytest.fixture
def fleet() -> Iterator[FleetElsewhere]:
    """Replaces the three-region fleet of conftest for this module: region-000 ... region-199."""
    running = FleetElsewhere(REGIONS)
    try:
        yield running
    finally:
        running.stop()


def listed_item(page: Page, name: str) -> Locator:
    """A region's card or tile (its id is "region-" + its name)."""
    return page.locator(f"#region-{name}")


def listed(page: Page) -> list[dict]:
    """Every region the overview lists, in page order: name, state, filter tags, whether shown."""
    return page.evaluate("""Array.from(document.querySelectorAll('#overview [data-filters]'), e => (
        {region: e.dataset.region, state: e.dataset.state, tags: e.dataset.filters.split(' '),
         shown: e.offsetParent !== null}))""")


def test_overview_of_200_regions_puts_every_region_not_up_above_the_up_ones(live_server_factory, open_page):
    server = live_server_factory(**FLEET_SETTINGS)
    broken = {"region-150": "http_500", "region-042": "degraded", "region-007": "http_500"}
    for region, mode in broken.items():
        server.fleet.set(region, mode=mode)
    tab = open_page(server.url("/"))
    page = tab.page
    expect(listed_item(page, "region-150")).to_have_attribute("data-state", "down")
    expect(listed_item(page, "region-007")).to_have_attribute("data-state", "down")
    expect(listed_item(page, "region-042")).to_have_attribute("data-state", "degraded")

    regions = listed(page)
    assert len(regions) == REGIONS
    states = [r["state"] for r in regions]
    first_up = states.index("up")
    assert "up" not in states[:first_up] and set(states[first_up:]) == {"up"}, states
    # Down before degraded; each class in config order.
    assert [r["region"] for r in regions if r["region"] in broken] == ["region-007", "region-150", "region-042"]
    # The problems are full cards, the 197 fine regions compact tiles.
    expect(page.locator("#attention-group article.region-card")).to_have_count(first_up)
    expect(page.locator("#fine-group li.region-tile")).to_have_count(REGIONS - first_up)
    expect(listed_item(page, "region-100").locator("a.region-link")).to_have_attribute("href", "/regions/region-100")
    expect(page.locator("#show-down .filter-count")).to_have_text(str(states.count("down")))
    assert tab.problems() == []

    # A link carries its filter; a state that is no filter shows every state.
    linked = open_page(server.url("/?show=no-such-state&q=region-19"))
    expect(linked.page.locator("#show-all")).to_have_attribute("aria-pressed", "true")
    expect(linked.page.get_by_label("Find a region")).to_have_value("region-19")
    expect(linked.page.locator("#overview [data-filters]:visible")).to_have_count(10)
    expect(listed_item(linked.page, "region-190")).to_be_visible()
    assert linked.problems() == []


def test_overview_filter_by_state_and_text_survives_the_live_refresh(live_server_factory, open_page):
    server = live_server_factory(**FLEET_SETTINGS)
    for region in ("region-150", "region-199", "region-042"):
        server.fleet.set(region, mode="http_500")
    tab = open_page(server.url("/"))
    page = tab.page
    expect(listed_item(page, "region-150")).to_have_attribute("data-state", "down")
    page.evaluate("window.__noReload = 1")

    page.get_by_label("Find a region").fill("region-1")
    down = page.locator("#show-down")
    down.focus()
    page.keyboard.press("Enter")  # the counts bar is keyboard usable
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#show-all")).to_have_attribute("aria-pressed", "false")
    expect(listed_item(page, "region-150")).to_be_visible()
    expect(listed_item(page, "region-042")).to_be_hidden()  # down, but not "region-1..."
    expect(listed_item(page, "region-100")).to_be_hidden()  # "region-1...", but up

    # A live refresh brings a newly failed region that matches: the filter still holds.
    server.fleet.set("region-123", mode="http_500")
    expect(listed_item(page, "region-123")).to_have_attribute("data-state", "down")
    expect(listed_item(page, "region-123")).to_be_visible()
    for r in listed(page):
        assert r["shown"] == ("down" in r["tags"] and "region-1" in r["region"]), r
    shown = sum(r["shown"] for r in listed(page))
    expect(page.locator("#region-filter-status")).to_have_text(f"Showing {shown} of {REGIONS} regions")
    expect(page.get_by_label("Find a region")).to_have_value("region-1")
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#fine-group")).to_be_hidden()  # no up region can match
    assert parse_qs(urlsplit(page.url).query) == {"show": ["down"], "q": ["region-1"]}

    down.click()  # pressing it again lets go of the state; the text stays
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#show-all")).to_have_attribute("aria-pressed", "true")
    expect(listed_item(page, "region-100")).to_be_visible()
    expect(listed_item(page, "region-042")).to_be_hidden()
    page.locator("#region-filter-clear").click()
    expect(listed_item(page, "region-042")).to_be_visible()
    expect(page.locator("#region-filter-status")).to_have_text("")
    assert page.evaluate("window.__noReload") == 1, "the page reloaded instead of filtering in place"
    assert tab.problems() == []
