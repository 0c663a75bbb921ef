"""What a region says about itself is untrusted text: shown as text, never run as markup."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

# The dashboard clips versions to 64 characters; both payloads fit in full.
VERSION_PAYLOAD = "<img src=x onerror=window.__pwned=1>"
REGION_PAYLOAD = "<script>window.__pwned=2</script>"


def _assert_nothing_ran(page: Page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator('img[src="x"]').count() == 0
    scripts = page.locator("script").evaluate_all("(all) => all.map((s) => s.textContent)")
    assert not [s for s in scripts if "__pwned" in s], "a script element made it into the page"


def test_markup_in_a_version_string_renders_as_text_and_runs_nothing(live_server, open_page):
    tab = open_page(live_server.url("/"))
    page = tab.page
    card = page.locator("#region-eu-west-1")
    expect(card).to_have_attribute("data-state", "up")

    # Arrives through an htmx swap on the open overview, then on the region page's first paint.
    live_server.fleet.set("eu-west-1", version=VERSION_PAYLOAD, answers_as=REGION_PAYLOAD)
    expect(card.locator(".version")).to_have_text(VERSION_PAYLOAD)
    assert card.locator(".version").text_content().strip() == VERSION_PAYLOAD
    # Answering as another region is misrouting: the reason quotes the name it answered with.
    expect(card.locator(".reason")).to_contain_text(REGION_PAYLOAD)
    expect(card.locator(".markers .marker-misrouted")).to_be_attached()
    _assert_nothing_ran(page)
    assert tab.problems() == []

    tab = open_page(live_server.url("/regions/eu-west-1"))
    page = tab.page
    summary = page.locator("#region-summary")
    expect(summary.locator(".version")).to_have_text(VERSION_PAYLOAD)
    expect(summary.locator(".reason")).to_contain_text(REGION_PAYLOAD)
    # The new version is an event, and its reason quotes the version.
    expect(page.locator("#region-events")).to_contain_text(VERSION_PAYLOAD)
    payload = page.locator("pre#deployment-payload")
    expect(payload).to_contain_text(f'"version": "{VERSION_PAYLOAD}"')
    expect(payload).to_contain_text(f'"region": "{REGION_PAYLOAD}"')
    _assert_nothing_ran(page)
    assert tab.problems() == []
