"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

Walks what a user does: log in, create a key, train a model from a CSV, watch a bot's socket
appear in Connections and close it (4000), revoke a key (4401), see the charge in Usage.
Screenshots of every page go to test-artifacts/screenshots/.

The server has a data folder of its own (an account, no models, no keys), so nothing here
depends on what other fixtures trained; each test has a browser context of its own and logs
in itself, so one failing can't take the other with it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import (
    PASSWORD,
    Server,
    require_service,
    run_cli,
    warmup_prices,
    write_config,
    write_prices,
)

ROOT = Path(__file__).resolve().parents[2]
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


EMAIL = "trader@example.com"
# Only the walk-through trains models, all under this strategy: its rows are the new model's.
STRATEGY = "browser_walkthrough"
# Waits for the server (a page's API calls, a socket showing up), generous for a busy machine.
UI_TIMEOUT = 20_000
TRAINING_TIMEOUT = 180_000  # a training job: queued, spawned in a worker process, fitted


@dataclass
class Site:
    server: Server
    base: str
    prices: Path  # a CSV to upload

    @property
    def url(self) -> str:  # the websocket
        return self.server.url


@pytest.fixture(scope="module")
def site(tmp_path_factory, module_servers) -> Site:
    """A server on a data folder of its own: one account, no keys, no models."""
    folder = tmp_path_factory.mktemp("browser")
    config = write_config(folder)
    run_cli(config, "accounts", "create", EMAIL)
    server = module_servers(config)
    return Site(server, f"http://127.0.0.1:{server.port}", write_prices(folder / "prices.csv"))


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=UI_TIMEOUT)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser):
    """``open_page(width, height)``: a tab in a fresh browser context (no cookies, no state
    from another test); after the test, no script error and no CSP violation happened in it."""
    contexts, errors = [], []

    def open_(width: int, height: int):
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        context.set_default_timeout(UI_TIMEOUT)
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console",
               lambda m: errors.append(m.text) if "Content Security" in m.text else None)
        return tab

    yield open_
    for context in contexts:
        context.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page, base: str) -> None:
    page.goto(base + "/")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()


def authenticate(ws, key: str) -> None:
    ws.send(key)
    assert json.loads(ws.recv(timeout=10))["status"] == "success"


def close_code_of(ws) -> int:
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    return ws.close_code


def strategy_rows(page, strategy: str):
    """The rows of the models table under the heading "Strategy <strategy>", and no other."""
    heading = page.locator("h3").filter(
        has=page.locator("code").get_by_text(strategy, exact=True))
    return heading.locator("xpath=following-sibling::div[1]").locator("tbody > tr")


def test_walk_through_the_dashboard(open_page, site):
    page = open_page(1200, 860)
    page.goto(site.base + "/")
    expect(page.get_by_role("heading", name="Log in to Nember")).to_be_visible()
    # A visitor who isn't logged in sees the login form, not the menu or a "Log out".
    expect(page.get_by_role("navigation", name="Sections")).to_be_hidden()
    expect(page.get_by_role("button", name="Log out")).to_be_hidden()
    shot(page, "login")

    page.get_by_label("Email").fill(EMAIL)
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
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    assert secret not in page.content()  # never shown again

    # Train a model from a CSV: preview, options, progress, then it is listed.
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Train a model")).to_be_visible()
    new_rows = strategy_rows(page, STRATEGY)
    expect(new_rows).to_have_count(0)  # the strategy is the walk-through's own
    page.set_input_files("#csv-file", str(site.prices))
    expect(page.locator("#csv-preview")).to_contain_text("point1")
    page.get_by_label("Strategy").fill(STRATEGY)
    page.get_by_label("Target column").select_option("direction")
    page.locator("#features input[value=move]").uncheck()
    page.get_by_label("Model family").select_option("DecisionTree")
    page.get_by_label("Window (data points per sample)").fill("2")
    assert "LightGBM" in page.get_by_label("Model family").inner_text()
    shot(page, "train")
    page.get_by_role("button", name="Start training").click()
    # Exactly the new model's row: the only one under its strategy's heading.
    expect(new_rows).to_have_count(1, timeout=TRAINING_TIMEOUT)
    row = new_rows.first
    expect(row.locator("td").nth(0)).to_have_text("DecisionTree")
    expect(row.locator("td").nth(1)).to_have_text("class")
    expect(row).to_contain_text("point1, point2 × 2")
    expect(page.get_by_text(f"Strategy {STRATEGY}")).to_be_visible()
    shot(page, "models")

    # A long training can be cancelled from the page.
    page.set_input_files("#csv-file", str(site.prices))
    expect(page.locator("#csv-preview")).to_contain_text("point1")
    page.get_by_label("Strategy").fill(STRATEGY + "-cancelled")
    page.get_by_label("Target column").select_option("direction")
    page.locator("#features input[value=move]").uncheck()
    page.get_by_label("Model family").select_option("RandomForest")
    page.get_by_label("Hyperparameters (JSON, optional)").fill('{"n_estimators": 1000}')
    page.get_by_role("button", name="Start training").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("alert")).to_have_text("Training failed: cancelled by its owner",
                                                   timeout=TRAINING_TIMEOUT)
    expect(strategy_rows(page, STRATEGY + "-cancelled")).to_have_count(0)

    # A bot connects with the new key and predicts; the socket shows up by itself.
    with connect(site.url, open_timeout=10) as ws:
        authenticate(ws, secret)
        ws.send(json.dumps({
            "strat_name": STRATEGY, "model_name": "DecisionTree", "model_type": "class",
            "DataPoints": [{"point1": 1, "point2": 2}, {"point1": 3, "point2": 4}]}))
        assert json.loads(ws.recv(timeout=10))["type"] == "success"
        page.get_by_role("link", name="Connections").click()
        live = page.locator("#live tr", has_text="browser-bot")
        expect(live).to_be_visible()
        expect(live).to_contain_text("127.0.0.1")
        expect(live.locator("td.num").first).to_have_text("1")
        shot(page, "connections")
        live.get_by_role("button", name="Close").click()
        assert close_code_of(ws) == 4000
    expect(page.locator("#live")).to_contain_text("No live connections")
    expect(page.locator("#history")).to_contain_text("closed by owner")

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
    assert page.request.get(site.base + "/api/keys").status == 401


def test_a_csv_whose_indicators_warm_up_trains_with_those_rows_skipped(open_page, site,
                                                                        tmp_path):
    csv_path = tmp_path / "indicators.csv"
    csv_path.write_text(warmup_prices())
    page = open_page(1200, 860)
    log_in(page, site.base)
    page.get_by_role("link", name="Models").click()
    page.set_input_files("#csv-file", str(csv_path))
    skip = page.get_by_label("Skip the warm-up rows")
    expect(skip).to_be_checked()
    expect(page.locator("#warmup-field")).to_contain_text(
        "the first 2 rows have empty cells in sma3")
    expect(page.locator("#features input[value=sma3]")).to_be_enabled()
    skip.uncheck()  # without skipping them, the indicator can't be a feature
    expect(page.locator("#features input[value=sma3]")).to_be_disabled()
    skip.check()
    page.get_by_label("Strategy").fill("warm-browser")
    page.get_by_label("Target column").select_option("direction")
    page.locator("#features input[value=move]").uncheck()
    page.get_by_role("button", name="Start training").click()
    rows = strategy_rows(page, "warm-browser")
    expect(rows).to_have_count(1, timeout=TRAINING_TIMEOUT)
    expect(rows.first).to_contain_text("point1, point2, sma3 × 1")


def test_a_models_evaluation_shows_its_folds_backtest_calibration_and_warnings(
        open_page, site, tmp_path):
    rows = site.prices.read_text().splitlines()
    csv_path = tmp_path / "with-returns.csv"
    csv_path.write_text("\n".join([rows[0] + ",ret"] + [
        f"{row},{float(row.split(',')[3]) / 100:.6f}" for row in rows[1:]]) + "\n")
    page = open_page(1200, 900)
    log_in(page, site.base)
    page.get_by_role("link", name="Models").click()
    page.set_input_files("#csv-file", str(csv_path))
    page.get_by_label("Strategy").fill("evaluated-browser")
    page.get_by_label("Target column").select_option("direction")
    page.locator("#features input[value=ret]").uncheck()  # move stays: it gives it away
    page.get_by_label("Walk-forward folds").fill("4")
    page.get_by_label("Next-bar returns column (for a backtest)").select_option("ret")
    page.get_by_role("button", name="Start training").click()
    rows = strategy_rows(page, "evaluated-browser")
    expect(rows).to_have_count(1, timeout=TRAINING_TIMEOUT)
    expect(rows.first).to_contain_text("2 warnings")
    rows.first.get_by_role("button", name="Evaluation").click()
    report = page.locator("#evaluation")
    expect(report.get_by_role("heading")).to_have_text(
        "Evaluation of evaluated-browser · DecisionTree class v1")
    expect(report.get_by_role("alert").first).to_contain_text(
        "feature 'move' predicts the target on its own")
    expect(report.locator("#folds tbody tr")).to_have_count(5)  # four folds and the total
    expect(report.locator("#folds thead")).to_contain_text("Buy & hold")
    expect(report.locator("#coverage")).to_contain_text("top 10% hit rate")
    expect(report.locator("#equity-plot svg polyline")).to_have_count(2)
    expect(report.locator("#calibration-plot svg circle").first).to_be_visible()
    shot(page, "evaluation")


def test_the_page_fits_a_phone(open_page, site):
    # A charged connection of its own, so Usage has rows whatever ran before.
    key = run_cli(site.server.config, "keys", "create", "--account", EMAIL,
                  "--name", "phone-bot").stdout.strip().splitlines()[-1]
    with connect(site.url, open_timeout=10) as ws:
        authenticate(ws, key)
    page = open_page(390, 844)
    log_in(page, site.base)
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Per connection")).to_be_visible()
    expect(page.locator("tr[data-usage]").first).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling of the page; wide tables scroll in their box
    shot(page, "usage-phone")


def test_a_model_trained_elsewhere_is_imported_from_the_models_page(open_page, site, tmp_path):
    """An ONNX classifier made with scikit-learn and skl2onnx, imported through the form, then
    asked by a bot; a pickle is refused with the form's one-line error."""
    import csv
    import pickle

    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    with site.prices.open() as rows:
        table = list(csv.DictReader(rows))
    X = np.array([[float(r["point1"]), float(r["point2"])] for r in table])
    y = np.array([r["direction"] == "up" for r in table], dtype=int)  # index 0 down, 1 up
    model = LogisticRegression().fit(X, y)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(to_onnx(model, X[:1].astype(np.float32),
                                  options={"zipmap": False}).SerializeToString())
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(model))

    page = open_page(1200, 900)
    log_in(page, site.base)
    page.get_by_role("link", name="Models").click()
    page.set_input_files("#import-file", str(pickled))
    page.get_by_label("strat_name bots will send").fill("imported-browser")
    page.get_by_label("Features, in the model's input order").fill("point1,point2")
    page.get_by_label("Class labels by index (optional)").fill("down,up")
    page.get_by_role("button", name="Import model").click()
    expect(page.locator("#import-result")).to_contain_text("pickle files can run code")
    expect(strategy_rows(page, "imported-browser")).to_have_count(0)

    page.set_input_files("#import-file", str(onnx_file))
    page.get_by_role("button", name="Import model").click()
    rows = strategy_rows(page, "imported-browser")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ONNX")
    expect(rows.first).to_contain_text("point1, point2 × 1")
    shot(page, "import")

    key = run_cli(site.server.config, "keys", "create", "--account", EMAIL, "--name",
                  "import-bot").stdout.strip().splitlines()[-1]
    point = {"point1": 0.8, "point2": -0.3}
    with connect(site.url) as ws:
        authenticate(ws, key)
        ws.send(json.dumps({"strat_name": "imported-browser", "model_name": "ONNX",
                            "model_type": "class", "DataPoints": [point]}))
        answer = json.loads(ws.recv(timeout=10))
    want = ("down", "up")[int(model.predict([[point["point1"], point["point2"]]])[0])]
    assert (answer["type"], answer["prediction"]) == ("success", want)
