"""The overview at fleet scale: regions that need a look first, the rest after; filters and counts."""
from __future__ import annotations

from typing import Any

from dashboard.model import RegionStatus
from dashboard.web.overview import ATTENTION_CLASSES, COMPACT_ABOVE, lay_out

from .web_helpers import Dash


def status(region: str, state: str = "up", override: dict[str, Any] | None = None,
           maintenance: dict[str, Any] | None = None) -> RegionStatus:
    return RegionStatus(region=region, state=state, reason="", since=None, last_poll_at=None, latency_ms=None,
                        error_rate_5m=None, error_rate_1h=None, reported_error_rate=None, version=None, markers={},
                        reported_region=None, reported_primary_region=None, reported_regions=None,
                        deployment_at=None, override=override, maintenance=maintenance,  # type: ignore[typeddict-item]
                        vantage={}, disputed=False)


WINDOW = {"id": 1, "region": "r-maintained", "starts_at": 0.0, "ends_at": 1.0, "reason": "r", "actor": "a",
          "created_at": 0.0, "ended_at": None, "end_kind": None}


OVERRIDE = {"region": "x", "target_region": "y", "read_only": True, "reason": "r", "actor": "a", "since": 0.0,
            "until": None, "forced": False}


def test_regions_needing_attention_come_first_most_urgent_first_each_class_in_config_order():
    fleet = [status("r-up-1"), status("r-degraded-1", "degraded"), status("r-overridden", override=OVERRIDE),
             status("r-down-1", "down"), status("r-unknown", "unknown"), status("r-stale", "stale"),
             status("r-up-2"), status("r-down-2", "down"), status("r-degraded-2", "degraded"),
             status("r-down-overridden", "down", override=OVERRIDE), status("r-maintained", maintenance=WINDOW)]
    layout = lay_out(fleet)
    assert [i.status["region"] for i in layout.attention] == [
        "r-down-1", "r-down-2", "r-down-overridden", "r-stale", "r-degraded-1", "r-degraded-2", "r-unknown",
        "r-overridden", "r-maintained"]
    assert [i.status["region"] for i in layout.fine] == ["r-up-1", "r-up-2"]
    assert [c.name for c in ATTENTION_CLASSES] == ["down", "stale", "degraded", "unknown", "overridden",
                                                   "maintenance"]
    tags = {i.status["region"]: i.tags.split() for i in [*layout.attention, *layout.fine]}
    assert tags["r-down-overridden"] == ["down", "overridden", "attention"]
    assert tags["r-overridden"] == ["up", "overridden", "attention"]
    assert tags["r-up-1"] == ["up"]
    # Each button counts every region it would show.
    assert {f.name: f.count for f in layout.filters} == {
        "all": 11, "attention": 9, "down": 3, "stale": 1, "degraded": 2, "unknown": 1, "overridden": 2,
        "maintenance": 1, "up": 4}
    assert [f.name for f in layout.filters][:2] == ["all", "attention"]


def test_fine_regions_become_compact_tiles_only_in_a_fleet_too_large_for_cards():
    assert not lay_out([status(f"r-{i}") for i in range(COMPACT_ABOVE)]).compact
    assert lay_out([status(f"r-{i}") for i in range(COMPACT_ABOVE + 1)]).compact


def test_a_fleet_with_nothing_wrong_has_nothing_needing_attention():
    layout = lay_out([status("a"), status("b")])
    assert layout.attention == [] and len(layout.fine) == 2
    assert {f.name: f.count for f in layout.filters}["attention"] == 0


def test_overview_page_lists_down_then_degraded_then_up_with_a_counts_bar_of_toggle_buttons(dash: Dash):
    dash.fleet.set("ap-southeast-1", mode="http_500")
    dash.fleet.set("eu-west-1", mode="degraded")
    dash.cycle(times=dash.settings.dashboard.failure_threshold)
    soup = dash.page("/")
    items = soup.select("#overview [data-filters]")
    assert [(i["data-region"], i["data-state"]) for i in items] == [
        ("ap-southeast-1", "down"), ("eu-west-1", "degraded"), ("us-east-1", "up")]
    attention = soup.select_one("#attention-group")
    assert attention is not None
    assert [c["data-region"] for c in attention.select("article.region-card")] == ["ap-southeast-1", "eu-west-1"]
    assert soup.select("#overview .region-tile") == []  # three regions: every one a full card
    buttons = soup.select("#overview-filters button")
    assert {b["data-show"]: b.select_one(".filter-count").get_text() for b in buttons} == {
        "all": "3", "attention": "2", "down": "1", "stale": "0", "degraded": "1", "unknown": "0",
        "overridden": "0", "maintenance": "0", "up": "1"}
    assert {b["type"] for b in buttons} == {"button"}
    assert [b["data-show"] for b in buttons if b["aria-pressed"] == "true"] == ["all"]
    # The text filter is outside the live part: a refresh never touches what is being typed.
    search = soup.select_one("form#region-filter[role=search]")
    assert search is not None and search.find_parent(id="overview") is None
    field = search.select_one("input#region-filter-text")
    label = search.select_one("label[for=region-filter-text]")
    assert field is not None and label is not None
    fragment = dash.page("/fragments/overview", headers={"HX-Request": "true"})
    assert fragment.select_one("#region-filter") is None
