"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

Walks what a user does: log in, create a key, train a model from a CSV, watch a bot's socket
appear in Connections and close it (4000), revoke a key (4401), see the charge in Usage.
Screenshots of every page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.harness import PASSWORD, Server, require_service, write_config

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

require_service(
    "Debian's chromium and the playwright package (bash .ci/run installs both)"
    if CHROMIUM is None or sync_playwright is None else None
)

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def site(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    config = write_config(folder, data_dir=trained.data_dir)
    server = Server(config)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def page(site):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 860})
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
        yield tab
        assert not errors, errors  # no script error and no CSP violation on any page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def authenticate(ws, key: str) -> None:
    ws.send(key)
    assert json.loads(ws.recv(timeout=10))["status"] == "success"


def close_code_of(ws) -> int:
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    return ws.close_code


def test_walk_through_the_dashboard(page, site, trained):
    base = f"http://127.0.0.1:{site.port}"
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Log in to Nember")).to_be_visible()
    shot(page, "login")

    page.get_by_label("Email").fill("trader@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")  # the keyboard works as well as the mouse
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()

    # Create a key: shown once, with a copy button.
    page.get_by_label("Name").fill("browser-bot")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret-value").inner_text()
    assert secret.startswith("nmb_")
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    expect(page.locator("tr", has_text="browser-bot")).to_contain_text(secret[:12])
    shot(page, "keys")
    page.reload()
    assert secret not in page.content()  # never shown again

    # Train a model from a CSV: preview, options, progress, then it is listed.
    page.get_by_role("link", name="Models").click()
    page.set_input_files("#csv-file", str(trained.data))
    expect(page.locator("#csv-preview")).to_contain_text("point1")
    page.get_by_label("Strategy").fill("browser")
    page.get_by_label("Target column").select_option("direction")
    page.locator("#features input[value=move]").uncheck()
    page.get_by_label("Model family").select_option("DecisionTree")
    page.get_by_label("Window (data points per sample)").fill("2")
    assert "LightGBM" in page.get_by_label("Model family").inner_text()
    shot(page, "train")
    page.get_by_role("button", name="Start training").click()
    row = page.locator("tr", has_text="DecisionTree").filter(has_text="point1, point2 × 2")
    expect(row.first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Strategy browser")).to_be_visible()
    shot(page, "models")

    # A bot connects with the new key and predicts; the socket shows up by itself.
    with connect(site.url, open_timeout=10) as ws:
        authenticate(ws, secret)
        ws.send(json.dumps({
            "strat_name": "browser", "model_name": "DecisionTree", "model_type": "class",
            "DataPoints": [{"point1": 1, "point2": 2}, {"point1": 3, "point2": 4}]}))
        assert json.loads(ws.recv(timeout=10))["type"] == "success"
        page.get_by_role("link", name="Connections").click()
        live = page.locator("#live tr", has_text="browser-bot")
        expect(live).to_be_visible(timeout=10_000)
        expect(live).to_contain_text("127.0.0.1")
        expect(live.locator("td.num").first).to_have_text("1", timeout=10_000)
        shot(page, "connections")
        live.get_by_role("button", name="Close").click()
        assert close_code_of(ws) == 4000
    expect(page.locator("#live")).to_contain_text("No live connections", timeout=10_000)
    expect(page.locator("#history")).to_contain_text("closed by owner", timeout=10_000)

    # Revoking the key closes its sockets with 4401.
    with connect(site.url, open_timeout=10) as ws:
        authenticate(ws, secret)
        page.get_by_role("link", name="API keys").click()
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("tr", has_text="browser-bot").get_by_role("button", name="Revoke").click()
        assert close_code_of(ws) == 4401
    expect(page.locator("tr", has_text="browser-bot")).to_contain_text("revoked")

    # Both connections were charged; Usage shows them.
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Per connection")).to_be_visible()
    rows = page.locator("tr[data-usage]")
    assert rows.count() >= 2
    expect(page.locator("#total-amount")).to_contain_text("USD")
    expect(page.locator(".chart svg").first).to_be_visible()
    shot(page, "usage")

    # Log out: back to the login form, and the API refuses the old session.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in to Nember")).to_be_visible()
    assert page.request.get(base + "/api/keys").status == 401


def test_the_page_fits_a_phone(page, site):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"http://127.0.0.1:{site.port}/")
    page.get_by_label("Email").fill("trader@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Per connection")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling of the page; wide tables scroll in their box
    shot(page, "usage-phone")
