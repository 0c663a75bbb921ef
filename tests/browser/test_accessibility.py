"""The page at 3 a.m. (issue 15), in a real Chromium: both themes (the system's, and the toggle that
is remembered), the charts following the theme, no sideways scroll at 360 px, 44 px tap targets,
axe-core clean on every page in both themes, and a failover made with the keyboard alone."""
from __future__ import annotations

import re
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect
from werkzeug.security import generate_password_hash

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"
OPERATORS = {"alice": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")}
THEMES = ("light", "dark")
PHONE_WIDTH = 360
MIN_TAP_PX = 44
# Every WCAG 2.x A/AA rule axe-core has, and its best practices (landmarks, unique names, ...).
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa",
                                                     "best-practice"]}}
# The controls a thumb must hit: buttons, selects, links that act (not links inside running text).
TAP_TARGETS = ("button:visible, select:visible, .button:visible, .topbar a:visible, .failover-link:visible, "
               ".failback-link:visible, .maintenance-link:visible, .pager a:visible, input[type=radio]:visible, "
               "input[type=checkbox]:visible")
REASON = "eu-west-1 drill, by keyboard"


def _server(live_server_factory):
    """The live app: an operator, eu-west-1 failing, ap-southeast-1 in maintenance."""
    server = live_server_factory(auth={"operators": OPERATORS}, routing_file="routing.json")
    from dashboard.maintenance import Maintenance

    Maintenance(server.settings, server.store).start("ap-southeast-1", reason="database migration", actor="alice",
                                                     duration_minutes=60)
    for region in server.fleet.regions:
        server.wait_for_polls(region, 2)
    return server


def _pages(server) -> list[str]:
    return [server.url(p) for p in ("/", "/regions/eu-west-1", "/regions/ap-southeast-1", "/routing", "/events",
                                    "/login", "/regions/eu-west-1/failover", "/regions/ap-southeast-1/maintenance")]


def _log_in(page: Page, server) -> None:
    page.goto(server.url("/login?next=/"))
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.locator("#login-form button[type=submit]").click()
    expect(page).to_have_url(server.url("/"))


def _settle(page: Page) -> None:
    """Wait for what draws after load: the charts of a region page."""
    page.wait_for_load_state("networkidle")
    if page.locator("#charts").count():
        expect(page.locator("#chart-latency .main-svg").first).to_be_visible()


def _violations(page: Page) -> list[str]:
    result = Axe().run(page, options=AXE_OPTIONS)
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
            for v in result.response["violations"]]


@pytest.mark.parametrize("theme", THEMES)
def test_every_page_is_axe_clean_and_fits_a_360_px_screen(live_server_factory, open_page, theme):
    server = _server(live_server_factory)
    tab = open_page(server.url("/"), width=PHONE_WIDTH, height=740, color_scheme=theme)
    page = tab.page
    _log_in(page, server)  # the forms too, as an operator sees them
    expected_theme_dark = theme == "dark"
    for url in _pages(server):
        page.goto(url)
        _settle(page)
        assert page.evaluate("window.dashboardTheme()") == theme, url
        assert (page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(13, 17, 23)") \
            == expected_theme_dark, url
        assert _violations(page) == [], f"axe-core on {url} ({theme})"
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{url} scrolls sideways by {overflow} px at {PHONE_WIDTH} px ({theme})"
        small = page.eval_on_selector_all(TAP_TARGETS, f"""(els) => els
            .map((e) => [e.outerHTML.slice(0, 80), e.getBoundingClientRect()])
            .filter(([, r]) => r.width > 0 && (r.width < {MIN_TAP_PX} || r.height < {MIN_TAP_PX}))
            .map(([html, r]) => `${{html}} ${{Math.round(r.width)}}x${{Math.round(r.height)}}`)""")
        # A radio or checkbox counts through its label, which is the tap target around it.
        small = [s for s in small if not re.match(r'<input type="(radio|checkbox)"', s)]
        assert small == [], f"tap targets under {MIN_TAP_PX} px on {url}: {small}"
        labels = page.eval_on_selector_all(
            "label:has(input[type=radio]), label:has(input[type=checkbox])",
            f"(els) => els.filter((e) => e.getBoundingClientRect().height < {MIN_TAP_PX}).map((e) => e.textContent)")
        assert labels == [], f"labels of radios and checkboxes under {MIN_TAP_PX} px on {url}"
    assert tab.problems() == []


def test_the_theme_toggle_is_remembered_and_the_charts_follow_it(live_server_factory, open_page):
    server = _server(live_server_factory)
    tab = open_page(server.url("/regions/eu-west-1"), color_scheme="light")
    page = tab.page
    _settle(page)
    toggle = page.locator("#theme-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    light_text = page.evaluate("document.querySelector('#chart-latency')._fullLayout.font.color")

    toggle.click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    dark_text = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--text').trim()")
    page.wait_for_function("(c) => document.querySelector('#chart-latency')._fullLayout.font.color === c",
                           arg=dark_text)
    assert dark_text != light_text

    # Remembered: on the next page and after a reload, dark before anything else draws.
    page.goto(server.url("/routing"))
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.goto(server.url("/regions/eu-west-1"))
    _settle(page)
    assert page.evaluate("document.querySelector('#chart-error-rate')._fullLayout.font.color") == dark_text
    assert page.evaluate("document.querySelector('#chart-error-rate')._fullLayout.xaxis.gridcolor") == \
        page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--chart-grid').trim()")

    # Back to light, even though the toggle chose it against nothing: the choice wins over the system.
    page.locator("#theme-toggle").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    page.reload()
    expect(page.locator("#theme-toggle")).to_have_attribute("aria-pressed", "false")
    assert tab.problems() == []


def test_a_dark_system_gets_the_dark_theme_until_the_toggle_says_otherwise(live_server_factory, open_page):
    server = _server(live_server_factory)
    tab = open_page(server.url("/"), color_scheme="dark")
    page = tab.page
    expect(page.locator("#theme-toggle")).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(13, 17, 23)"
    page.locator("#theme-toggle").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(246, 248, 250)"
    assert tab.problems() == []


def _tab_to(page: Page, selector: str, presses: int = 80) -> None:
    """Press Tab until the focused element matches `selector`; fail after `presses`."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} never got the keyboard focus in {presses} Tab presses")


def _focus_visible(page: Page) -> dict[str, Any]:
    """The focused element's outline: a visible focus indicator must be drawn."""
    return page.evaluate("""() => { const s = getComputedStyle(document.activeElement);
        return {style: s.outlineStyle, width: parseFloat(s.outlineWidth)}; }""")


def test_an_operator_fails_a_region_over_with_the_keyboard_alone(live_server_factory, open_page):
    server = _server(live_server_factory)
    tab = open_page(server.url("/"), width=PHONE_WIDTH, height=740)
    page = tab.page
    expect(page.locator("#region-eu-west-1")).to_have_attribute("data-state", "up")

    _tab_to(page, ".account a")
    assert _focus_visible(page)["style"] != "none"
    page.keyboard.press("Enter")
    expect(page.locator("#username")).to_be_focused()  # autofocus
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(server.url("/"))

    _tab_to(page, "#region-eu-west-1 .failover-link")
    focus = _focus_visible(page)
    assert focus["style"] != "none" and focus["width"] >= 2, focus
    page.keyboard.press("Enter")
    form = page.locator("#action-panel #failover-form")
    expect(form).to_be_visible()

    _tab_to(page, 'input[name="confirm_healthy"]')
    page.keyboard.press("Space")
    expect(form.locator('input[name="confirm_healthy"]')).to_be_checked()
    _tab_to(page, "#failover-reason")
    page.keyboard.type(REASON)
    _tab_to(page, "#failover-form button[type=submit]")
    assert _focus_visible(page)["style"] != "none"
    page.keyboard.press("Enter")

    expect(page.locator("#action-panel #action-result")).to_contain_text(
        "eu-west-1's new traffic now goes to us-east-1")
    routing = page.request.get(server.url("/api/v1/routing")).json()
    assert routing["regions"]["eu-west-1"]["serving_region"] == "us-east-1"
    assert routing["regions"]["eu-west-1"]["override"]["reason"] == REASON
    assert tab.problems() == []


def test_a_window_from_the_region_page_shows_on_card_and_page(live_server_factory, open_page):
    server = live_server_factory(auth={"operators": OPERATORS})
    tab = open_page(server.url("/"))
    page = tab.page
    _log_in(page, server)
    page.goto(server.url("/regions/eu-west-1"))
    page.locator("#region-summary .maintenance-link").click()
    form = page.locator("#action-panel #maintenance-form")
    expect(form).to_be_visible()
    form.locator("#maintenance-duration").select_option("60")
    form.locator("#maintenance-reason").fill("rollout: migrate")
    form.locator("button[type=submit]").click()
    expect(page.locator("#maintenance-result")).to_contain_text("Maintenance of eu-west-1 started")
    # routing-changed refreshes the summary at once, without a reload
    expect(page.locator("#region-summary .maintenance-note")).to_contain_text("in maintenance until")
    expect(page.locator("#region-summary .marker-maintenance")).to_be_visible()
    page.goto(server.url("/"))
    expect(page.locator("#region-eu-west-1 .maintenance-note")).to_contain_text("(rollout: migrate, by alice)")
    page.goto(server.url("/regions/eu-west-1"))
    _settle(page)
    shaded = page.evaluate("""() => (document.querySelector('#chart-latency')._fullLayout.shapes || [])
        .filter((s) => s.type === 'rect').length""")
    assert shaded == 1, "the window is not shaded on the chart"
    assert tab.problems() == []


def test_the_theme_toggle_and_a_maintenance_window_work_by_keyboard_alone(live_server_factory, open_page):
    server = live_server_factory(auth={"operators": OPERATORS})
    tab = open_page(server.url("/"), color_scheme="light")
    page = tab.page
    _log_in(page, server)
    page.goto(server.url("/regions/eu-west-1"))

    _tab_to(page, "#theme-toggle")
    assert _focus_visible(page)["style"] != "none"
    page.keyboard.press("Enter")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")

    _tab_to(page, "#region-summary .maintenance-link")
    assert _focus_visible(page)["style"] != "none"
    page.keyboard.press("Enter")
    expect(page.locator("#action-panel #maintenance-form")).to_be_visible()
    _tab_to(page, "#maintenance-reason")
    page.keyboard.type("rollout: register in DNS")
    _tab_to(page, "#maintenance-form button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.locator("#maintenance-result")).to_contain_text("Maintenance of eu-west-1 started")
    expect(page.locator("#region-summary .maintenance-note")).to_contain_text("register in DNS")
    assert [w["region"] for w in page.request.get(server.url("/api/v1/maintenance")).json()["windows"]] == [
        "eu-west-1"]
    assert tab.problems() == []
