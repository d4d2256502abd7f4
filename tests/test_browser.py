"""/docs and /redoc in a real headless Chromium, with no network beyond 127.0.0.1.

Debian's chromium (installed here if missing: CI runs as root on a fresh machine) driven
by Playwright. Every request the pages make goes through a Playwright route: one to any
host but 127.0.0.1 is aborted and recorded, and each test asserts there was none. The
browser's own DNS is also pointed nowhere for every host but 127.0.0.1, and its
background services are off, so nothing but the page under test talks to the network.
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, sync_playwright

from conftest import ARTIFACTS, MODELS, REPO, ServerProcess
from servekit.server import docs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces under the routes below: no host but 127.0.0.1 resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
PREDICT = "/v1/models/{model_name}:predict"

# The first test of the module may install Chromium first.
pytestmark = pytest.mark.timeout(900)


def ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
        timeout=900,
    )
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is missing"
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(path), args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Offline:
    """One browser context whose every request is checked: 127.0.0.1 or nothing."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def assert_loopback_only(self) -> None:
        assert self.blocked == [], f"requests beyond 127.0.0.1 were attempted: {self.blocked}"
        for url in self.requests:
            parts = urlsplit(url)
            local = parts.scheme in ("blob", "data") or parts.hostname == "127.0.0.1"
            assert local, f"request beyond 127.0.0.1 (refused by the page's CSP): {url}"
        # Console errors include what a Content-Security-Policy refused.
        assert self.errors == [], self.errors


@pytest.fixture()
def offline(browser: Browser) -> Iterator[Offline]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    o = Offline(context, page)
    context.route("**/*", o.route)
    page.on("request", lambda r: o.requests.append(r.url))
    page.on("pageerror", lambda e: o.errors.append(f"page error: {e}"))
    page.on(
        "console", lambda m: o.errors.append(f"console: {m.text}") if m.type == "error" else None
    )
    yield o
    context.close()


def open_operation(page: Page, path: str) -> Locator:
    """Expand one operation of Swagger UI, found by its path as the page shows it."""
    block = page.locator(f'.opblock:has(.opblock-summary-path[data-path="{path}"])')
    block.locator(".opblock-summary").click()
    return block


def execute(page: Page, block: Locator, model: str) -> tuple[str, dict[str, object]]:
    """Click Execute; return the status and the JSON body that Swagger UI displays."""
    with page.expect_response(lambda r: f"/v1/models/{model}:predict" in r.url):
        block.get_by_role("button", name="Execute").click()
    live = block.locator(".live-responses-table tbody tr.response").first
    live.locator(".response-col_status").wait_for()
    assert block.locator(".request-url pre").inner_text().endswith(f"/v1/models/{model}:predict")
    status = live.locator(".response-col_status").inner_text().strip()
    body = json.loads(live.locator(".highlight-code code").inner_text())
    return status, body


def test_swagger_ui_try_it_out_offline(offline: Offline, demo_server: ServerProcess) -> None:
    """A new user's first click: the demo's predict, Try it out, Execute, 200."""
    page = offline.page
    page.goto(f"{demo_server.url}/docs")
    block = open_operation(page, PREDICT)
    block.get_by_role("button", name="Try it out").click()
    model_input = block.locator("tr[data-param-name='model_name'] input")
    assert model_input.input_value() == "digits"
    assert block.locator("select.examples-select-element").input_value() == "digits"
    status, body = execute(page, block, "digits")
    assert status == "200", body
    predictions = body["predictions"]
    assert isinstance(predictions, list) and len(predictions) == 2
    # The demo's sample_request.json: real digits, a 7 and a 6.
    assert [row.index(max(row)) for row in predictions] == [7, 6]
    block.scroll_into_view_if_needed()
    block.screenshot(path=ARTIFACTS / "docs-try-it-out.png")
    page.screenshot(path=ARTIFACTS / "docs-page.png")
    assert f"{demo_server.url}/docs/assets/swagger-ui/swagger-ui-bundle.js" in offline.requests
    offline.assert_loopback_only()


def test_every_model_example_runs_in_swagger_ui(
    offline: Offline, repo_server: ServerProcess
) -> None:
    """Several models: the default example matches the default model_name, and each
    model's example, chosen in the dropdown with its name typed in, succeeds."""
    models = [m["name"] for m in httpx.get(f"{repo_server.url}/v1/models").json()]
    assert len(models) > 1
    page = offline.page
    page.goto(f"{repo_server.url}/docs")
    block = open_operation(page, PREDICT)
    block.get_by_role("button", name="Try it out").click()
    model_input = block.locator("tr[data-param-name='model_name'] input")
    select = block.locator("select.examples-select-element")
    assert model_input.input_value() == select.input_value() == models[0]
    assert [o.get_attribute("value") for o in select.locator("option").all()] == models
    for name in models:
        select.select_option(name)
        model_input.fill(name)
        status, body = execute(page, block, name)
        assert status == "200", (name, body)
        assert "predictions" in body, (name, body)
    offline.assert_loopback_only()


def test_redoc_renders_offline(offline: Offline, demo_server: ServerProcess) -> None:
    page = offline.page
    page.goto(f"{demo_server.url}/redoc")
    page.get_by_role("heading", name=re.compile(r"^servekit \(")).wait_for()
    page.get_by_role("menuitem", name="TF Serving REST (v1)").locator("label").first.click()
    page.get_by_role("menuitem", name="Predict (newest version)").click()
    operation = page.locator("[data-section-id='tag/TF-Serving-REST-(v1)/operation/v1_predict']")
    operation.get_by_text("Request samples").wait_for()
    text = operation.inner_text()
    assert "/v1/models/{model_name}:predict" in text and '"instances"' in text
    # Search runs in a Web Worker made from a blob: URL (allowed by the page's CSP).
    page.get_by_placeholder("Search...").fill("metadata")
    page.locator("[data-role='search:results']").first.wait_for()
    page.screenshot(path=ARTIFACTS / "redoc-page.png")
    offline.assert_loopback_only()


def test_docs_pages_load_nothing_from_elsewhere(demo_server: ServerProcess) -> None:
    """The HTML names only this server's files, and the CSP holds the browser to that."""
    for path in (docs.DOCS_URL, docs.REDOC_URL):
        r = httpx.get(demo_server.url + path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == docs.CONTENT_SECURITY_POLICY
        assert "'unsafe-eval'" not in r.headers["content-security-policy"]
        urls = re.findall(r'(?:src|href)="([^"]*)"', r.text)
        assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
        assert "http" not in r.text.lower().replace("http-equiv", "")
        for u in urls:
            assert httpx.get(demo_server.url + u).status_code == 200, u
    # FastAPI's CDN pages are gone, not merely shadowed.
    schema = httpx.get(demo_server.url + "/openapi.json").json()
    assert not any(p.startswith(("/docs", "/redoc")) for p in schema["paths"])


def test_vendored_assets_match_their_sources() -> None:
    """static/ holds exactly what scripts/vendor_docs_assets.py wrote, licences included."""
    static = docs.static_dir()
    sources = json.loads((static / "SOURCES.json").read_text())
    assert {s["package"] for s in sources} == {"swagger-ui-dist", "redoc"}
    recorded: set[str] = set()
    for s in sources:
        folder = static / next(iter(s["files"])).split("/")[0]
        assert (folder / "LICENSE").is_file(), s["package"]
        for rel, digest in s["files"].items():
            assert hashlib.sha256((static / rel).read_bytes()).hexdigest() == digest, rel
            recorded.add(rel)
        on_disk = {f"{folder.name}/{p.name}" for p in folder.iterdir()}
        assert on_disk == {r for r in recorded if r.startswith(f"{folder.name}/")}
    assert "cdn.redoc.ly" not in (static / "redoc" / "redoc.standalone.js").read_text()


# -- image models, API keys -----------------------------------------------------------------

INFER = "/v2/models/{model_name}/infer"
IMAGE_MODELS = 6  # as many as the MediaPipe set that took /docs 16-20 s to render


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The digits model and six 224x224x3 image models (tests/models/image)."""
    repo = tmp_path_factory.mktemp("images") / "repo"
    shutil.copytree(REPO / "digits", repo / "digits")
    for i in range(IMAGE_MODELS):
        shutil.copytree(MODELS / "image" / "image", repo / f"image{i}")
    server = ServerProcess(str(repo), name="images").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_docs_with_image_models_render_fast_and_run_the_small_one(
    offline: Offline, image_server: ServerProcess
) -> None:
    """Image models' examples are abridged: the page renders at once, the infer
    operation expands and shows them, and the small model's example runs in one click."""
    size = len(httpx.get(f"{image_server.url}/openapi.json").content)
    page = offline.page
    started = time.monotonic()
    page.goto(f"{image_server.url}/docs")
    block = open_operation(page, INFER)
    select = block.locator("select.examples-select-element")
    select.wait_for()
    rendered_s = time.monotonic() - started
    options = [o.get_attribute("value") for o in select.locator("option").all()]
    assert options == ["digits", *(f"image{i}" for i in range(IMAGE_MODELS))]
    select.select_option("image2")
    example = block.locator(".body-param__example, .example").first.inner_text()
    assert '"shape"' in example and "224" in example, example
    block.get_by_role("button", name="Try it out").click()
    select.select_option("digits")
    with page.expect_response(lambda r: "/v2/models/digits/infer" in r.url):
        block.get_by_role("button", name="Execute").click()
    live = block.locator(".live-responses-table tbody tr.response").first
    live.locator(".response-col_status").wait_for()
    assert live.locator(".response-col_status").inner_text().strip() == "200"
    body = json.loads(live.locator(".highlight-code code").inner_text())
    assert body["model_name"] == "digits" and body["outputs"][0]["shape"] == [1, 10]
    block.scroll_into_view_if_needed()
    block.screenshot(path=ARTIFACTS / "docs-image-models.png")
    (ARTIFACTS / "docs-image-models.json").write_text(
        json.dumps({"openapi_bytes": size, "docs_rendered_and_infer_expanded_s": rendered_s})
    )
    # Measured 26 MB for ten such models before examples were abridged (16-20 s to
    # render with six); bounds allow for a loaded machine.
    assert size < 200 * 1024, size
    assert rendered_s < 10, rendered_s
    offline.assert_loopback_only()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[ServerProcess]:
    server = ServerProcess(
        str(REPO / "digits" / "1" / "model.tflite"),
        env={"SERVEKIT_API_KEYS": '["key-one"]'},
        name="keyed-docs",
    ).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def status_of_execute(page: Page, block: Locator, model: str) -> int:
    """Click Execute; the status the server answered (read from the network: the
    table of a second Execute shows the first's answer until it is replaced)."""
    with page.expect_response(lambda r: f"/v1/models/{model}:predict" in r.url) as answer:
        block.get_by_role("button", name="Execute").click()
    return answer.value.status


def authorize(page: Page, key: str | None) -> None:
    """Swagger UI's "Authorize" dialog: log out of the X-API-Key scheme, then log in
    with ``key`` (None: stay logged out)."""
    page.locator(".auth-wrapper .authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    scheme = dialog.locator(".auth-container", has_text="X-API-Key")
    scheme.wait_for()
    # (Swagger UI labels these buttons "Remove authorization", "Apply credentials".)
    logout = scheme.locator("button", has_text="Logout")
    if logout.count():
        logout.click()
    if key is not None:
        scheme.locator("input").fill(key)
        scheme.locator("button", has_text="Authorize").click()
    dialog.locator("button.close-modal").click()


def test_swagger_ui_asks_for_the_api_key_and_authorize_sends_it(
    offline: Offline, keyed_server: ServerProcess
) -> None:
    """With API keys, the document needs one: the page asks, loads with it, and
    "Authorize" (declared in the document) holds it for Try it out."""
    page = offline.page
    page.goto(f"{keyed_server.url}/docs")
    form = page.locator("#servekit-api-key")
    form.wait_for()
    assert "needs an API key" in form.inner_text()
    form.locator("input").fill("key-one")
    with page.expect_response(lambda r: r.url.endswith("/openapi.json") and r.status == 200):
        form.get_by_role("button", name="Use this key").click()
    block = open_operation(page, PREDICT)
    block.get_by_role("button", name="Try it out").click()
    status, body = execute(page, block, "model")
    assert status == "200", body
    authorize(page, None)
    assert status_of_execute(page, block, "model") == 401
    authorize(page, "key-one")
    assert status_of_execute(page, block, "model") == 200
    page.screenshot(path=ARTIFACTS / "docs-api-key.png")
    assert offline.blocked == []
    # The only console error: the browser's report of the document's first 401.
    assert all("401" in e for e in offline.errors), offline.errors


def test_redoc_asks_for_the_api_key(offline: Offline, keyed_server: ServerProcess) -> None:
    page = offline.page
    page.goto(f"{keyed_server.url}/redoc")
    form = page.locator("#servekit-api-key")
    form.locator("input").fill("key-one")
    form.get_by_role("button", name="Use this key").click()
    page.get_by_role("heading", name=re.compile(r"^servekit \(")).wait_for()
    assert offline.blocked == []
    assert all("401" in e for e in offline.errors), offline.errors
