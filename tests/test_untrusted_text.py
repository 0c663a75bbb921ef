"""What regions (and other users) send is shown, never obeyed: no terminal escape or control byte
reaches the operator's terminal from the CLI, and no bidi control reorders a page."""
from __future__ import annotations

import time

import pytest
from bs4 import BeautifulSoup

from dashboard.text import one_line

from .routing_helpers import BEARER, SLOW_POLLING, auth_config
from .test_cli import run_cli
from .web_helpers import Dash

# An OSC window title, a screen clear, a colour, a C1 CSI, a backspace, a bell and a bidi override.
HOSTILE_VERSION = "1.0\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b1m\x08\x07\u202e2"
BIDI = {chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def control_characters(text: str) -> list[str]:
    """Every character a terminal or a bidi algorithm would act on, except the line breaks."""
    return [repr(ch) for ch in text
            if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F or ch in BIDI]


@pytest.mark.parametrize(("text", "shown"), [
    ("1.0\x1b]0;title\x07\x1b[31mred\x1b[0m", "1.0red"),
    ("a\nb\tc", "a b c"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("\u202egnp.exe", "\\u202egnp.exe"),
    ("link\x1b]8;;https://evil.example\x1b\\here\x1b]8;;\x1b\\", "linkhere"),
    ("c1\x9b2Jcsi", "c1csi"),
])
def test_one_line_removes_escape_sequences_and_shows_control_characters(text, shown):
    assert one_line(text) == shown


def test_the_cli_prints_no_control_byte_a_region_sent(fleet, make_settings):
    settings = make_settings(fleet, routing_file="routing.json", **SLOW_POLLING)
    fleet.set("eu-west-1", version=HOSTILE_VERSION)
    outputs = [run_cli("poll", "--once", "--config", settings.source)]
    for command in (["status"], ["routing"], ["validate", "eu-west-1"]):
        outputs.append(run_cli(*command, "--config", settings.source))
    outputs.append(run_cli("failover", "eu-west-1", "--reason", "disk\x1b]0;x\x07 full\u202e", "--actor",
                           "mallory\x1b[2J", "--confirm-healthy", "--config", settings.source))
    outputs.append(run_cli("routing", "--config", settings.source))
    for result in outputs:
        for stream in (result.stdout, result.stderr):
            assert not control_characters(stream), (result.args, stream[-500:])
    assert "1.0" in outputs[1].stdout and "\\u202e2" in outputs[1].stdout  # shown, not obeyed


def test_pages_isolate_region_text_and_show_bidi_controls(make_dash):
    dash: Dash = make_dash(auth=auth_config(), **SLOW_POLLING)
    dash.fleet.set("eu-west-1", version="1.0.0\u202e1.0.2")
    dash.cycle()
    with dash.store.transaction():
        dash.store.insert_event(at=time.time(), region="eu-west-1", kind="state", old_state="up",
                                new_state="degraded", reason="reads \u202ebackwards\u202c here")
    response = dash.client.post("/api/v1/routing/overrides", headers=BEARER, json={
        "region": "eu-west-1", "reason": "moved \u2067because\u2069 \u202eof a disk", "confirm_healthy": True})
    assert response.status_code == 201, response.get_data(as_text=True)

    for url in ("/", "/fragments/overview", "/regions/eu-west-1", "/events", "/routing"):
        html = dash.get(url).get_data(as_text=True)
        assert not [ch for ch in html if ch in BIDI], f"a bidi control reached {url}"
    card = dash.page("/").select_one("#region-eu-west-1")
    version = card.select_one(".version bdi")
    assert version is not None and version.get_text() == "1.0.0\\u202e1.0.2"
    reasons = [td.select_one("bdi") for td in dash.page("/events").select("td.event-reason")]
    assert all(reasons) and "reads \\u202ebackwards\\u202c here" in [r.get_text() for r in reasons]
    routing = dash.page("/routing").select_one('tr[data-region="eu-west-1"]')
    assert "moved \\u2067because\\u2069 \\u202eof a disk" in [b.get_text() for b in routing.select("bdi")]


def test_markers_title_attributes_carry_no_bidi_controls(make_dash):
    dash: Dash = make_dash(**SLOW_POLLING)
    dash.fleet.set("eu-west-1", version="2.0\u202e")
    dash.cycle()
    page = BeautifulSoup(dash.get("/").get_data(as_text=True), "html.parser")
    titles = [li.get("title", "") for li in page.select(".marker")]
    assert titles and not [t for t in titles if set(t) & BIDI]
