"""The web pages as an on-call engineer sees them: real poll cycles, a real database, parsed HTML."""
from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

from .conftest import REGIONS
from .web_helpers import (
    ONE_DAY_SECONDS,
    WINDOWS,
    Dash,
    assert_security_headers,
    query,
    vary_values,
)

PAGES = ["/", "/regions/eu-west-1", "/events"]


def cards(soup: BeautifulSoup) -> dict[str, object]:
    """Region cards of the overview by region name, in page order."""
    return {card["data-region"]: card for card in soup.select("#overview article.region-card")}


def text(element) -> str:
    return " ".join(element.get_text(" ").split())


# -- overview ------------------------------------------------------------------------------------


def test_overview_shows_every_configured_region_the_degraded_one_first_with_state_and_reason(dash: Dash):
    dash.fleet.set("eu-west-1", mode="degraded")
    dash.cycle()
    soup = dash.page("/")
    found = cards(soup)
    assert list(found) == ["eu-west-1"] + [r for r in REGIONS if r != "eu-west-1"]  # the rest in config order
    for region, card in found.items():
        assert card["id"] == f"region-{region}"
        link = card.select_one("a.region-link")
        assert link is not None and link["href"] == f"/regions/{region}"
    eu, us = found["eu-west-1"], found["us-east-1"]
    assert eu["data-state"] == "degraded"
    assert text(eu.select_one(".state-label")) == "DEGRADED"
    assert "health says 'degraded'" in text(eu.select_one(".reason"))
    assert us["data-state"] == "up"
    assert text(us.select_one(".state-label")) == "UP"


def test_overview_before_any_poll_shows_every_region_unknown(dash: Dash):
    found = cards(dash.page("/"))
    assert list(found) == REGIONS
    assert {card["data-state"] for card in found.values()} == {"unknown"}
    assert {text(card.select_one(".state-label")) for card in found.values()} == {"UNKNOWN"}


def test_overview_card_shows_latency_error_rates_last_poll_and_version(dash: Dash):
    for mode in ["healthy", "http_500", "healthy", "healthy"]:
        dash.fleet.set("eu-west-1", mode=mode)
        dash.cycle()
    card = cards(dash.page("/"))["eu-west-1"]
    assert re.search(r"\d", text(card.select_one(".latency")))
    # One failed poll out of four, in both windows.
    assert "25" in text(card.select_one(".error-rate-5m"))
    assert "25" in text(card.select_one(".error-rate-1h"))
    assert text(card.select_one(".version")) == "1.0.0"
    stamp = card.select_one("time.last-polled")
    assert stamp is not None
    polled = datetime.fromisoformat(stamp["datetime"])
    assert polled.tzinfo is not None, "the datetime attribute must carry its time zone"
    assert abs((datetime.now(UTC) - polled).total_seconds()) < 60
    assert re.search(r"\d+\s*s ago|just now", text(stamp)), text(stamp)


def test_region_that_went_down_shows_down_with_its_reason_and_a_banner_naming_it(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)  # failure_threshold
    soup = dash.page("/")
    eu = cards(soup)["eu-west-1"]
    assert eu["data-state"] == "down"
    assert text(eu.select_one(".state-label")) == "DOWN"
    assert "HTTP 500" in text(eu.select_one(".reason"))
    banner = soup.select_one("#alert-banner")
    assert banner is not None and banner.get("role") == "alert"
    assert "eu-west-1" in text(banner)
    assert "us-east-1" not in text(banner)


def test_no_alert_banner_while_no_region_is_down_or_stale(dash: Dash):
    dash.fleet.set("eu-west-1", mode="degraded")  # degraded is shown on its card, it does not page
    dash.cycle()
    soup = dash.page("/")
    banner = soup.select_one("#alert-banner")
    assert banner is None or (banner.get("role") != "alert" and not text(banner))
    assert soup.select('[role="alert"]') == []


def test_region_unpolled_for_three_intervals_turns_stale_with_the_banner(dash: Dash):
    dash.cycle()
    assert cards(dash.page("/"))["eu-west-1"]["data-state"] == "up"
    time.sleep(3.2)  # three 1 s intervals pass with no poller: what a page shows when it has stopped
    soup = dash.page("/")
    for region, card in cards(soup).items():
        assert card["data-state"] == "stale", region
        assert text(card.select_one(".state-label")) == "STALE"
        assert card.select_one(".markers .marker.marker-stale") is not None
        assert "poller" in text(card.select_one(".reason"))
    banner = soup.select_one("#alert-banner")
    assert banner is not None and banner.get("role") == "alert"
    assert all(region in text(banner) for region in REGIONS)


def test_markers_show_misrouting_drift_and_skew_on_the_regions_concerned(dash: Dash):
    dash.fleet.set("eu-west-1", answers_as="us-east-1")
    dash.fleet.set("ap-southeast-1", primary_region="ap-southeast-1", fleet_regions=["ap-southeast-1"])
    dash.fleet.set("us-east-1", version="2.0.0")
    dash.cycle()
    found = cards(dash.page("/"))

    def markers(region: str) -> set[str]:
        classes = set()
        for marker in found[region].select(".markers .marker"):
            classes.update(c for c in marker["class"] if c.startswith("marker-"))
        return classes

    assert "marker-misrouted" in markers("eu-west-1")
    assert "marker-drift" in markers("ap-southeast-1")
    assert "marker-skew" in markers("us-east-1")
    assert markers("eu-west-1") == {"marker-misrouted"}
    misrouted = found["eu-west-1"].select_one(".marker-misrouted")
    assert "us-east-1" in text(misrouted) + misrouted.get("title", "")


def test_dashboard_location_names_its_own_region_and_that_regions_state(dash: Dash):
    dash.fleet.set("us-east-1", mode="degraded")
    dash.cycle()
    location = dash.page("/").select_one("#dashboard-location")
    assert location is not None
    assert dash.settings.deployment.region == "us-east-1"
    assert "us-east-1" in text(location)
    assert "degraded" in text(location).lower()


def test_overview_fragment_is_the_overview_section_alone_and_varies_on_htmx(dash: Dash):
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    page_section = dash.page("/").select_one("section#overview")
    for headers in ({}, {"HX-Request": "true"}):
        response = dash.get("/fragments/overview", headers=headers)
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert "hx-request" in vary_values(response)
        fragment = BeautifulSoup(response.get_data(as_text=True), "html.parser")
        assert fragment.find("html") is None and fragment.find("head") is None and fragment.find("body") is None
        roots = fragment.find_all(recursive=False)
        assert [(root.name, root.get("id")) for root in roots] == [("section", "overview")]
        assert [(c["id"], c["data-state"]) for c in cards(fragment).values()] == [
            (c["id"], c["data-state"]) for c in cards(BeautifulSoup(str(page_section), "html.parser")).values()]
        assert "eu-west-1" in text(fragment.select_one("#alert-banner"))


# -- region page ---------------------------------------------------------------------------------


def test_region_page_has_summary_charts_window_buttons_probes_events_and_payload(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    soup = dash.page("/regions/eu-west-1")
    summary = soup.select_one("#region-summary")
    assert summary is not None and "DOWN" in text(summary) and "HTTP 500" in text(summary)
    assert soup.select_one("#chart-error-rate") is not None
    assert soup.select_one("#chart-latency") is not None
    assert [b["data-window"] for b in soup.select("button.window-button[data-window]")] == WINDOWS
    assert soup.select_one("table#recent-probes") is not None
    events = soup.select_one("#region-events")
    assert events is not None and "down" in text(events).lower()
    assert soup.select_one("pre#deployment-payload") is not None


def test_recent_probes_table_shows_each_probe_with_endpoint_status_latency_and_reason(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle()
    rows = dash.page("/regions/eu-west-1").select("table#recent-probes tbody tr")
    assert len(rows) == 4  # two cycles, two endpoints each
    cells = [[text(cell) for cell in row.find_all(["td", "th"])] for row in rows]
    assert all(len(row) == 6 for row in cells), cells  # time, endpoint, ok, HTTP status, latency, reason
    newest_health = next(row for row in cells if "health" in row)
    assert "500" in newest_health and any("HTTP 500" in cell for cell in newest_health)
    oldest = cells[-2:]
    assert all("200" in row for row in oldest)
    assert {row[1] for row in cells} == {"health", "deployment"}


def test_region_page_shows_the_deployment_payload_pretty_printed_as_sent(dash: Dash):
    dash.fleet.set("eu-west-1", version="1.2.3")
    dash.cycle()
    payload_text = dash.page("/regions/eu-west-1").select_one("pre#deployment-payload").get_text()
    payload = json.loads(payload_text)
    assert payload["region"] == "eu-west-1" and payload["version"] == "1.2.3"
    assert payload["regions"] == REGIONS
    assert payload["region_base_urls"] == dash.fleet.base_urls
    assert "\n  " in payload_text  # pretty-printed, not one long line


def test_unknown_region_page_is_a_404_html_page_saying_so(dash: Dash):
    soup = dash.page("/regions/nowhere-1", status=404)
    assert "nowhere-1" in text(soup)
    assert "unknown" in text(soup).lower()


def test_region_summary_fragment_is_the_summary_partial_and_varies_on_htmx(dash: Dash):
    dash.fleet.set("eu-west-1", mode="degraded")
    dash.cycle()
    response = dash.get("/fragments/regions/eu-west-1/summary", headers={"HX-Request": "true"})
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "hx-request" in vary_values(response)
    fragment = BeautifulSoup(response.get_data(as_text=True), "html.parser")
    assert fragment.find("html") is None
    roots = fragment.find_all(recursive=False)
    assert [root.get("id") for root in roots] == ["region-summary"]
    assert "DEGRADED" in text(roots[0]).upper()
    assert dash.get("/fragments/regions/nowhere-1/summary").status_code == 404


# -- events page ---------------------------------------------------------------------------------


def event_ids(soup: BeautifulSoup) -> list[int]:
    return [int(row["data-event-id"]) for row in soup.select("table#events tr.event[data-event-id]")]


def test_events_page_lists_state_changes_newest_first(dash: Dash):
    dash.cycle()
    dash.fleet.set("eu-west-1", mode="http_500")
    dash.cycle(3)
    soup = dash.page("/events")
    ids = event_ids(soup)
    assert ids == sorted(ids, reverse=True) and len(ids) == 4  # three regions up, then eu-west-1 down
    newest = soup.select("table#events tr.event")[0]
    assert "eu-west-1" in text(newest) and "down" in text(newest).lower() and "HTTP 500" in text(newest)


def test_events_page_filters_by_region_with_a_get_form(dash: Dash):
    dash.insert_events(3, region="eu-west-1")
    dash.insert_events(2, region="us-east-1")
    soup = dash.page("/events?region=us-east-1")
    rows = soup.select("table#events tr.event")
    assert len(rows) == 2 and all("us-east-1" in text(row) for row in rows)
    form = soup.select_one("form#event-filter")
    assert form is not None and form.get("method", "").lower() == "get"
    options = [o.get("value", text(o)) for o in form.select("select[name=region] option")]
    assert [o for o in options if o] == REGIONS
    selected = form.select_one("select[name=region] option[selected]")
    assert selected is not None and selected.get("value", text(selected)) == "us-east-1"


def test_events_page_pages_back_through_older_events_keeping_the_filter(dash: Dash):
    inserted = dash.insert_events(60, region="eu-west-1")
    dash.insert_events(5, region="us-east-1")
    seen: list[int] = []
    url = "/events?region=eu-west-1&limit=25"
    sizes = []
    while url:
        soup = dash.page(url)
        ids = event_ids(soup)
        seen += ids
        sizes.append(len(ids))
        older = soup.select_one("a#older-events")
        if older is None:
            break
        href = older["href"]
        assert query(href)["before"] == [str(ids[-1])]
        assert query(href)["region"] == ["eu-west-1"]
        url = href if href.startswith("/") else "/events" + href[href.index("?"):]
        assert len(sizes) < 5, "paging does not end"
    assert sizes == [25, 25, 10]
    assert seen == sorted(inserted, reverse=True)


def test_events_page_has_no_older_link_when_the_last_page_is_exactly_full(dash: Dash):
    inserted = dash.insert_events(50)
    soup = dash.page(f"/events?limit=25&before={inserted[25]}")
    assert len(event_ids(soup)) == 25
    assert soup.select_one("a#older-events") is None


@pytest.mark.parametrize(
    ("params", "status", "name"),
    [("limit=0", 400, "limit"), ("limit=abc", 400, "limit"), ("before=-1", 400, "before"),
     ("before=abc", 400, "before"), ("region=nowhere-1", 404, "region")],
)
def test_events_page_refuses_bad_parameters_with_an_html_page_naming_it(dash: Dash, params, status, name):
    soup = dash.page(f"/events?{params}", status=status)
    assert name in text(soup)


# -- escaping, headers, assets -------------------------------------------------------------------


@pytest.mark.parametrize("markup", ["<b>x</b>", '"><img src=x onerror="alert(1)">'])
def test_markup_sent_by_a_region_is_shown_as_text_everywhere(dash: Dash, markup: str):
    dash.cycle()
    dash.fleet.set("eu-west-1", version=markup, answers_as=f"<i>{markup}</i>")
    dash.cycle()  # a version change: an event carrying the markup too
    for url in ["/", "/fragments/overview", "/regions/eu-west-1", "/fragments/regions/eu-west-1/summary",
                "/events"]:
        soup = dash.page(url)
        assert markup in soup.get_text(), url
        assert soup.find("b", string="x") is None and soup.find("i", string=re.compile("x")) is None, url
        assert soup.find("img", src="x") is None, url
        assert not [el for el in soup.find_all(True) if "onerror" in el.attrs], url


def test_every_page_fragment_and_error_carries_the_security_headers(dash: Dash):
    dash.cycle()
    for url in ["/", "/fragments/overview", "/regions/eu-west-1", "/fragments/regions/eu-west-1/summary",
                "/events", "/regions/nowhere-1", "/fragments/regions/nowhere-1/summary", "/events?limit=0",
                "/no-such-page"]:
        assert_security_headers(dash.get(url))


def test_no_page_has_an_inline_script(dash: Dash):
    dash.cycle()
    for url in PAGES:
        for script in dash.page(url).find_all("script"):
            assert script.get("src") or script.get("type") == "application/json", (url, str(script)[:200])
            for name in script.attrs:
                assert not name.startswith("on"), (url, name)


def test_every_script_and_stylesheet_is_served_by_the_app_with_long_caching_when_versioned(dash: Dash):
    dash.cycle()
    assets: dict[str, str] = {}
    for url in PAGES:
        soup = dash.page(url)
        for script in soup.find_all("script", src=True):
            assets[script["src"]] = "javascript"
        for link in soup.find_all("link", href=True):
            if "stylesheet" in link.get("rel", []):
                assets[link["href"]] = "text/css"
    assert "javascript" in assets.values() and "text/css" in assets.values()
    for href, kind in assets.items():
        parts = urlsplit(href)
        assert not parts.scheme and not parts.netloc, f"{href} is not served by the dashboard itself"
        response = dash.get(href)
        assert response.status_code == 200, href
        assert kind in response.mimetype, (href, response.mimetype)
        assert_security_headers(response)
        if "v" in query(href):
            assert response.cache_control.max_age is not None, href
            assert response.cache_control.max_age >= ONE_DAY_SECONDS, (href, response.headers["Cache-Control"])


def test_a_fat_deployment_payload_slows_no_status_read_and_shows_on_its_region_page(dash: Dash):
    dash.cycle()
    fat = {"region": "eu-west-1", "primary_region": "us-east-1", "regions": REGIONS, "version": "1.0.0",
           "build": [{"id": i, "name": f"component-{i}", "sha": f"{i:040x}", "tags": ["a", "b"]} for i in range(9000)]}
    assert len(json.dumps(fat)) > 900_000
    with dash.store.transaction():
        dash.store.update_deployment("eu-west-1", fat, "1.0.0", time.time())

    statements: list[str] = []
    dash.store.conn.set_trace_callback(statements.append)
    try:
        for url in ("/", "/fragments/overview", "/api/v1/status", "/routing", "/fragments/regions/eu-west-1/summary"):
            assert dash.get(url).status_code == 200
    finally:
        dash.store.conn.set_trace_callback(None)
    assert not [s for s in statements if "region_deployments" in s or "select * from regions" in s.lower()], \
        "a status read loaded the stored payload"
    # (What that costs is measured in bench/, not asserted here: the SQL above is the property.)

    # What pages need is in columns; the payload itself only on the region's own page and API.
    card = dash.page("/regions/eu-west-1")
    assert card.select_one(".reported-region").get_text(strip=True) == "eu-west-1"
    assert '"component-8999"' in card.select_one("#deployment-payload").get_text()
    assert dash.json("/api/v1/regions/eu-west-1")["deployment"]["build"][-1]["id"] == 8999
    assert "deployment" not in dash.json("/api/v1/status")["regions"][1]
