"""The web console at ``/console``, in a real browser against the real stack.

Headless Chromium (Debian's ``chromium`` package, which ``scripts/setup.sh`` installs like
``redis-server``; Playwright from PyPI drives it through ``executable_path`` and never downloads
a browser of its own) signs in as the client ``alice``, classifies a photo, opens a trained
version with its plots, trains a new version while watching its progress, activates a version,
looks at jobs and datasets, and signs out. Every JavaScript error the page logs fails the test.
Screenshots of every page, at 1280 x 800 and at a phone's 390 x 844, go to
``var/console-screenshots/`` for people to look at.

One browser serves the module; the first version of ``console-pets`` is submitted as the module
starts, so it trains while the browser and the prediction worker start.
"""

from __future__ import annotations

import base64
import shutil
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    FilePayload,
    Locator,
    Page,
    ViewportSize,
    expect,
)

from imgq.local.supervisor import REPO, Service
from tests.support.browser import chromium
from tests.support.datasets import make_dataset_zip, submit_finetune
from tests.support.http import credentials, http, wait_for_job

pytestmark = pytest.mark.e2e

CLIENT = "alice"
"""Who signs in: a client, so the page must show only what a client may do."""
MODEL = "console-pets"
SCREENSHOTS = REPO / "var" / "console-screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
EXPECTED_CSP = "default-src 'self'; img-src 'self' blob: data:"
BROWSER_FINETUNE = {"Epochs": "3", "Fine-tune epochs": "0", "Batch size": "16", "Image size": "64"}
"""The fields typed into the fine-tune form: a quick training (one phase, three epochs)."""
LONG_MS = 120_000
"""How long a step may wait for a job (a fine-tune on two busy cores)."""


@pytest.fixture(scope="module", autouse=True)
def first_version_job(api_server: str, train_worker: Service) -> str:
    """Submits alice's ``console-pets`` v1 as the module starts (autouse: before the prediction
    worker and the browser start, so it trains meanwhile); its job id, not waited for."""
    response = submit_finetune(
        api_server, make_dataset_zip(), caller=http.as_client(CLIENT), model=MODEL
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian's package, for the whole module."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """An empty ``var/console-screenshots/``: this run's pictures only."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


class ConsoleLog:
    """What the page wrote to its console and the exceptions it did not catch."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text}")

    def javascript_errors(self) -> list[str]:
        """Errors other than the browser's note that an answer was an HTTP error (expected
        where a test asks for something that is not there)."""
        return [e for e in self.errors if "Failed to load resource" not in e]


def _shot(page: Page, screenshots: Path, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def _sign_in(page: Page, base_url: str, client: str = CLIENT) -> None:
    page.goto(f"{base_url}/console")
    page.get_by_label("API key").fill(credentials.keys[client])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {client}")).to_be_visible()


def _loaded(image: Locator) -> None:
    """Wait until an ``<img>`` fetched with the key shows a real picture."""
    expect(image).to_have_attribute("data-state", "loaded", timeout=LONG_MS)
    assert image.evaluate("img => img.naturalWidth > 0 && img.src.startsWith('blob:')")


def test_console_page_and_assets_need_no_key_and_carry_the_policy(api_server: str) -> None:
    page = requests.get(f"{api_server}/console", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == EXPECTED_CSP
    assert "<script>" not in page.text and 'type="module" src=' in page.text  # nothing inline
    script = requests.get(f"{api_server}/console/assets/app.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    assert script.headers["Content-Security-Policy"] == EXPECTED_CSP
    missing = requests.get(f"{api_server}/console/assets/../auth.py", timeout=10)
    assert missing.status_code == 404
    slash = requests.get(f"{api_server}/console/", timeout=10, allow_redirects=False)
    assert slash.status_code == 308 and slash.headers["Location"] == "../console"
    assert "Content-Security-Policy" not in requests.get(f"{api_server}/healthz", timeout=5).headers
    spec = requests.get(f"{api_server}/openapi.json", timeout=10).json()
    assert not any(path.startswith("/console") for path in spec["paths"])
    assert "/whoami" in spec["paths"]  # what the page calls is documented like the rest


def test_whoami_names_the_keys_client_and_role(api_server: str) -> None:
    assert http.as_client(CLIENT).get(f"{api_server}/whoami").json() == {
        "client": CLIENT,
        "role": "client",
    }
    assert http.get(f"{api_server}/whoami").json() == {"client": "admin", "role": "admin"}
    refused = requests.get(f"{api_server}/whoami", timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_console_files_are_package_data_of_the_api_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    shipped = {path for pattern in patterns for path in (REPO / "api").glob(pattern)}
    files = {path for path in (REPO / "api" / "console_files").rglob("*") if path.is_file()}
    assert files and files <= shipped


@pytest.mark.usefixtures("predict_worker")
def test_journey_sign_in_classify_train_activate_sign_out(
    api_server: str,
    first_version_job: str,
    browser: Browser,
    screenshots: Path,
    cat_jpeg: bytes,
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    log = ConsoleLog(page)
    page.goto(f"{api_server}/console")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    _shot(page, screenshots, "01-sign-in")
    _sign_in(page, api_server)
    assert credentials.keys[CLIENT] not in page.url
    assert not context.cookies()
    stored = page.evaluate("() => Object.values(sessionStorage)")
    assert stored == [credentials.keys[CLIENT]]

    page.get_by_role("link", name="Classify", exact=True).click()
    _classify(page, cat_jpeg, explain=True, expected="Egyptian Mau")
    _shot(page, screenshots, "02-classify")

    trained = wait_for_job(api_server, first_version_job, timeout_s=600)
    assert trained["status"] == "succeeded", trained
    page.get_by_role("link", name="Models", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=MODEL))
    expect(row).to_contain_text(CLIENT)
    expect(page.get_by_role("link", name="imagenet")).to_be_visible()
    _shot(page, screenshots, "03-models")
    row.get_by_role("link", name=MODEL).click()
    for plot in ("Training curves", "Confusion matrix"):
        _loaded(page.get_by_alt_text(f"{plot} of {MODEL} v1"))
    per_class = page.get_by_role("table").filter(has_text="Precision")
    for label in ("cat", "coffee", "rocket"):
        expect(per_class).to_contain_text(label)
    expect(page.get_by_role("button", name="Export")).to_be_visible()
    _shot(page, screenshots, "04-model-version")

    page.get_by_role("link", name="classify with it").click()
    _classify(page, cat_jpeg, explain=False, expected="cat", model=MODEL, dropped=True)
    page.get_by_role("button", name="Correct").click()
    expect(page.get_by_text("Recorded: correct.")).to_be_visible()
    page.go_back()  # the model page again: its monitoring counts the labelled prediction
    monitoring = page.locator("section.monitoring")
    expect(monitoring).to_contain_text("online accuracy 1.000 from 1 labels", timeout=30_000)
    expect(monitoring.get_by_role("img")).to_have_count(3)  # class shares, confidences, accuracy
    _shot(page, screenshots, "05-monitoring")

    version = _finetune_in_the_browser(page, screenshots)
    assert version == 2
    _activate_the_other_version(page, screenshots)

    _jobs_and_datasets(page, screenshots)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0
    _shot(page, screenshots, "12-signed-out")
    assert not log.errors, log.errors  # not even a failed request
    context.close()


DROP_FILE = """(encoded) => {
    const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], "cat.jpg", { type: "image/jpeg" }));
    return transfer;
}"""
"""A DataTransfer holding the photo as cat.jpg, as a drag from the desktop brings it."""


def _classify(
    page: Page,
    image: bytes,
    *,
    explain: bool,
    expected: str,
    model: str | None = None,
    dropped: bool = False,
) -> None:
    """Classify one photo on the page shown (the Classify page, the model chosen when
    ``model`` says; chosen with the file input, or ``dropped`` on the drop zone), and check its
    top label, thumbnail and (with ``explain``) heatmap."""
    if model is not None:
        chosen = page.get_by_label("Model", exact=True)
        assert chosen.evaluate("select => select.selectedOptions[0].textContent") == model
    if dropped:
        transfer = page.evaluate_handle(DROP_FILE, base64.b64encode(image).decode())
        page.get_by_test_id("drop-zone").dispatch_event("drop", {"dataTransfer": transfer})
        expect(page.get_by_text("cat.jpg", exact=True)).to_be_visible()
    else:
        photo: FilePayload = {"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": image}
        page.get_by_label("Images", exact=True).set_input_files(files=[photo])
    if explain:
        page.get_by_label("Explain", exact=True).check()
    page.get_by_role("button", name="Classify", exact=True).click()
    result = page.locator("article.result")
    expect(result.locator(".labels li").first).to_contain_text(expected, timeout=LONG_MS)
    thumbnail = result.get_by_role("img", name="Image 1: cat.jpg")
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")
    if explain:
        _loaded(result.get_by_alt_text(f"Grad-CAM of {expected} on cat.jpg"))


def _finetune_in_the_browser(page: Page, screenshots: Path) -> int:
    """Start a fine-tune from the form, watch the progressbar to its end; the new version."""
    page.get_by_role("link", name="Fine-tune", exact=True).click()
    archive: FilePayload = {
        "name": "more.zip",
        "mimeType": "application/zip",
        "buffer": make_dataset_zip(seed=1),
    }
    page.get_by_label("Dataset archive").set_input_files(files=[archive])
    page.get_by_label("Model name").fill(MODEL)
    epochs = page.get_by_label("Epochs", exact=True)  # the server's default: chosen from the data
    expect(epochs).to_have_value("")
    expect(epochs).to_have_attribute("placeholder", "auto")
    for name, value in BROWSER_FINETUNE.items():
        page.get_by_label(name, exact=True).fill(value)
    page.get_by_role("button", name="Start fine-tune").click()
    expect(page.get_by_role("progressbar", name="Upload")).to_be_visible()
    training = page.get_by_role("progressbar", name="Training")
    expect(training).to_be_visible(timeout=30_000)
    seen: list[tuple[int, int]] = []
    done = page.locator("p.done")
    deadline = time.monotonic() + LONG_MS / 1000
    while not done.is_visible() and time.monotonic() < deadline:
        state = (
            int(training.get_attribute("data-epoch") or 0),
            int(training.get_attribute("data-total") or 0),
        )
        if not seen or seen[-1] != state:
            seen.append(state)
            if state[0] and len(seen) == 2:
                _shot(page, screenshots, "06-finetune-progress")
        page.wait_for_timeout(250)
    expect(done).to_be_visible()
    final = (
        int(training.get_attribute("data-epoch") or 0),
        int(training.get_attribute("data-total") or 0),
    )
    assert final == (3, 3), seen  # the bar reached the last epoch
    text = training.get_attribute("aria-valuetext") or ""
    assert all(word in text for word in ("epoch 3/3", "loss", "accuracy", "ETA")), text
    heading = page.get_by_role("heading", name=f"{MODEL} v", exact=False)
    version = int((heading.text_content() or "").rsplit("v", 1)[1])
    for plot in ("Training curves", "Confusion matrix"):
        _loaded(page.get_by_alt_text(f"{plot} of {MODEL} v{version}"))
    _shot(page, screenshots, "07-finetune-done")
    return version


def _activate_the_other_version(page: Page, screenshots: Path) -> None:
    page.get_by_role("link", name="Open the version").click()
    rows = page.locator("tr[data-version]")
    expect(rows).to_have_count(2)
    inactive = rows.filter(has=page.get_by_role("button", name="Activate"))
    expect(inactive).to_have_count(1)
    number = inactive.get_attribute("data-version")
    inactive.get_by_role("button", name="Activate").click()
    expect(page.get_by_role("alert")).to_contain_text(f"Version {number} of {MODEL} is now active")
    expect(page.locator(f'tr[data-version="{number}"]')).to_contain_text("active")
    expect(page.get_by_role("button", name="Activate")).to_have_count(1)  # now the other one
    _shot(page, screenshots, "08-activated")


def _jobs_and_datasets(page: Page, screenshots: Path) -> None:
    page.get_by_role("link", name="Jobs", exact=True).click()
    listing = page.get_by_role("table")
    expect(listing).to_contain_text("finetune")
    expect(listing).to_contain_text("Egyptian Mau")
    page.get_by_label("Type").select_option("finetune")
    expect(listing.get_by_role("row")).to_have_count(3)  # the header and two fine-tunes
    _shot(page, screenshots, "09-jobs")
    listing.get_by_role("link").first.click()
    expect(page.get_by_text("Job document (JSON)")).to_be_visible()
    expect(page.locator("pre")).to_contain_text('"type": "finetune"')
    _shot(page, screenshots, "10-job")
    page.get_by_role("link", name="Datasets", exact=True).click()
    page.get_by_role("link", name=MODEL).click()
    counts = page.get_by_role("table").filter(has_text="validation")
    expect(counts).to_contain_text("cat")
    _shot(page, screenshots, "11-dataset")


def test_errors_show_the_apis_message_and_pages_fit_a_phone(
    api_server: str, browser: Browser, screenshots: Path, first_version_job: str
) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    log = ConsoleLog(page)
    page.goto(f"{api_server}/console")
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Send a valid API key")
    expect(page.get_by_role("alert")).to_contain_text("unauthorized")
    assert page.evaluate("() => sessionStorage.length") == 0
    _sign_in(page, api_server)
    page.goto(f"{api_server}/console#/models/no-such-model")
    expect(page.get_by_role("alert")).to_contain_text("No model named 'no-such-model'")
    expect(page.locator("#view")).to_contain_text("No model named")  # never a blank page
    _shot(page, screenshots, "phone-error")
    page.goto(f"{api_server}/console#/models/imagenet")  # shared, and not alice's to manage
    expect(page.get_by_role("heading", name="Version 1")).to_be_visible()
    expect(page.get_by_role("button", name="Activate")).to_have_count(0)
    expect(page.locator("section.monitoring")).to_be_empty()  # owner or admin only
    wait_for_job(api_server, first_version_job, timeout_s=600)
    for view in ("classify", "jobs", "models", f"models/{MODEL}", "finetune", "datasets"):
        page.goto(f"{api_server}/console#/{view}")
        expect(page.locator("#view h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        _shot(page, screenshots, f"phone-{view.replace('/', '-')}")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{view} is {overflow} px wider than the phone"
    assert not log.javascript_errors(), log.errors
    context.close()
