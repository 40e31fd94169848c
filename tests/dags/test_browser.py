"""The Campaigns and models pages in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``) against a real Airflow API server that loads the plugin, logged in
through Airflow's own login page.

What a data engineer would check by hand: the pages refuse a browser that is not logged in; every
thumbnail's presigned URL loads (HTTP 200) and decodes; a ``<script>`` prompt is shown as text and never
runs; nothing logs a console error; the progress of a campaign moves while its shards render (the real
render code reporting, the page polling, no reload) and the page turns to the finished run by itself.

The same code writes the screenshots in docs/screenshots/ (``make screenshots``; other runs write them
under pytest's temporary folder). Chromium is installed with apt where it is missing and this is root;
elsewhere the tests skip, saying so (``GEN_TEST_CHROMIUM`` names another Chromium).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from gen_engine.config import Settings
from gen_engine.orchestration import finalize_campaign, plan_campaign, render_planned_shard, run_campaign
from gen_engine.resources import Resources, resources

REPO = Path(__file__).resolve().parents[2]
STARTER = REPO / "starter" / "model"
HOSTILE = "<script>window.__xss = 1</script> a red heart sticker"
FINISHED_CSV = (
    "prompt,seed,count,asset_name,size,label\n"
    "a red heart sticker,11,2,hero-heart,128x128,corner\n"
    "smiling face with sunglasses,12,2,cool-face,,\n"
    "a birthday cake,13,2,cake,256x256,edge\n"
    "a blue circle,14,1,circle,,\n"
    "红色的心,15,1,zh-heart,,\n"
    f"\"{HOSTILE}\",16,1,xss,,\n"
    "\"<img src=x onerror=window.__xss=2> a star\",17,1,xss-img,,\n"
    "a green apple,-3,1,bad-seed,,\n"
)


def _cjk_fonts_for_screenshots(apt) -> None:
    """Screenshots for docs/ show the Chinese prompts in a CJK font (Debian's chromium brings none)."""
    has = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False).stdout.strip()
    if not has:
        apt("fonts-noto-cjk")


@dataclass
class Site:
    url: str  # the API server's root
    password: str
    res: Resources
    shots: Path
    tmp: Path
    finished: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def site(s3_settings: Settings, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory,
         free_port) -> Iterator[Site]:
    """An `airflow api-server` on a free loopback port with the plugin, one admin user, the starter model
    published (and compiled) as production, and one finished campaign with hostile prompts."""
    tmp = tmp_path_factory.mktemp("browser")
    # A lineage store of its own (the session's S3 server): the pages show this module's runs and models only.
    settings = s3_settings.model_copy(update={"local_dir": tmp / "local"})
    password = secrets.token_urlsafe(12)
    pw_file = tmp / "passwords.json"
    pw_file.write_text(json.dumps({"admin": password}))
    port = free_port()
    env = os.environ | {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
        "GEN_LOCAL_DIR": str(settings.local_dir), "GEN_S3_ENDPOINT": s3_settings.s3_address,
        "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
        "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value()}
    log = open(tmp / "api-server.log", "wb")  # noqa: SIM115 (the server's, closed below)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "api-server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        res = resources(settings)
        from gen_engine.bootstrap import bootstrap

        bootstrap(res)  # the starter model as production, compiled: the models page's first row
        csv = tmp / "spring-launch.csv"
        csv.write_text(FINISHED_CSV, encoding="utf-8")
        finished = run_campaign(res, str(csv), "spring-launch", model="production", progress=False)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/api/v2/monitor/health", timeout=2):  # noqa: S310 (our http URL)
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API server did not come up:\n"
                                       + (tmp / "api-server.log").read_text(errors="replace")[-3000:]) from None
                time.sleep(0.5)
        shots = Path(os.environ.get("GEN_SCREENSHOTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Site(url, password, res, shots, tmp, finished)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(site: Site, debian, apt) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("GEN_TEST_CHROMIUM") or debian("chromium", "chromium", "the browser tests")
    if os.environ.get("GEN_SCREENSHOTS"):
        _cjk_fonts_for_screenshots(apt)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


class Watched:
    """A logged-in page and everything it reported: console errors, uncaught exceptions, image responses."""

    def __init__(self, browser: Any, site: Site, scheme: str = "light") -> None:
        self.ctx = browser.new_context(viewport={"width": 1360, "height": 860}, color_scheme=scheme)
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.images: dict[str, int] = {}
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        # The first answer for each image URL (a page shown again may revalidate it from the cache: 304).
        self.page.on("response", lambda r: self.images.setdefault(r.url, r.status)
                     if r.request.resource_type == "image" else None)
        login(self.page, site, "/campaigns/")

    def close(self) -> None:
        self.ctx.close()


def login(page: Any, site: Site, then: str) -> None:
    """Through Airflow's own login page, as a person would."""
    page.goto(f"{site.url}/auth/login?next={site.url}{then}")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", site.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}{then}**", timeout=30_000)


@pytest.fixture()
def watched(browser: Any, site: Site) -> Iterator[Watched]:
    w = Watched(browser, site)
    yield w
    w.close()


def all_images_decoded(page: Any) -> list[str]:
    """The src of every <img> on the page that did not load and decode (after waiting for them)."""
    page.wait_for_load_state("networkidle")
    return page.evaluate("""async () => {
        const imgs = [...document.images];
        for (const i of imgs) { i.loading = 'eager'; try { await i.decode(); } catch (e) {} }
        return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
    }""")


def test_the_pages_refuse_a_browser_that_is_not_logged_in(browser: Any, site: Site) -> None:
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        for path in ("/campaigns/", "/campaigns/models", "/campaigns/api/runs",
                     f"/campaigns/runs/{site.finished['run_id']}",
                     f"/campaigns/runs/{site.finished['run_id']}/download.zip",
                     f"/campaigns/runs/{site.finished['run_id']}/data_docs/index.html"):
            resp = page.request.get(site.url + path)
            assert resp.status == 401, path
        login(page, site, "/campaigns/")  # and the same browser, once logged in, gets the page
        assert page.locator("h1").inner_text() == "Campaigns"
    finally:
        ctx.close()


def test_a_finished_run_shows_every_image_and_its_prompts_as_text(watched: Watched, site: Site) -> None:
    page, run_id = watched.page, site.finished["run_id"]
    page.goto(f"{site.url}/campaigns/")
    row = page.locator(f"tr[data-run='{run_id}']")
    assert row.get_attribute("data-status") == "success"
    assert "shards 1/1 · images 10/10" in row.inner_text()
    assert all_images_decoded(page) == [] and row.locator("img").count() == 6
    page.screenshot(path=site.shots / "campaigns.png", full_page=True)

    page.click(f"a[href='runs/{run_id}']")
    page.wait_for_url(f"**/campaigns/runs/{run_id}")
    assert all_images_decoded(page) == []
    assert page.locator(".grid img").count() == 10
    text = page.locator("body").inner_text()
    assert HOSTILE in text and "<img src=x onerror=window.__xss=2> a star" in text  # shown as text ...
    assert page.evaluate("typeof window.__xss") == "undefined"  # ... and never run
    captions = " ".join(page.locator(".grid figcaption").all_inner_texts())
    assert "1 rejected" in text and "a red heart sticker" in captions and "green apple" not in captions
    assert "AI label: corner" in text and "AI label: edge" in text and "C2PA signed" in text
    page.screenshot(path=site.shots / "run.png", full_page=True)

    # The run's links answer for this logged-in browser: its Data Docs (through the app), the manifest
    # (presigned S3), the whole run as a zip (streamed).
    for name in ("validation (Data Docs)", "manifest.csv", "download the whole run (zip)"):
        href = page.get_by_role("link", name=name).first.get_attribute("href")
        resp = page.request.get(urljoin(page.url, href))
        assert resp.status == 200, (name, href)
    assert watched.images and all(s == 200 for s in watched.images.values()), watched.images
    assert watched.errors == []


def test_progress_moves_while_a_campaign_renders(watched: Watched, site: Site) -> None:
    """Three shards rendered one after another by the real shard code while the page is open: each one's
    progress shows without a reload; when the run finishes the page shows it finished by itself."""
    res, page = site.res, watched.page
    csv = site.tmp / "autumn-teaser.csv"
    csv.write_text("prompt,seed,count\n" + "".join(f"a {c} heart,{i},4\n" for i, c in enumerate(
        ("red", "blue", "green", "yellow", "purple", "orange"))), encoding="utf-8")
    plan = plan_campaign(res, {"source": str(csv), "campaign": "autumn-teaser", "model": "production",
                               "shard_size": 8})
    assert len(plan["shards"]) == 3
    page.goto(f"{site.url}/campaigns/")
    page.evaluate("window.__same_page = true")
    row = f"tr[data-run='{plan['run_id']}']"
    assert page.get_attribute(row, "data-status") == "running"
    assert page.inner_text(f"{row} td.progress").startswith("planned")
    assert "shards 0/3 · images 0/24" in page.inner_text(f"{row} td.progress")
    assert "6 read" in page.inner_text(row)  # the plan's counts, before any image
    results = []
    for i, shard in enumerate(plan["shards"][:2]):
        results.append(render_planned_shard(res, plan["plan_key"], shard["index"]))
        page.wait_for_function("([sel, want]) => document.querySelector(sel + ' td.progress')"
                               ".textContent.includes(want)", arg=[row, f"shards {i + 1}/3 · images {8 * (i + 1)}/24"],
                               timeout=15_000)
        assert page.evaluate("window.__same_page") is True  # moved in place, not by a reload
        if i == 0:
            cell = page.inner_text(f"{row} td.progress")
            assert cell.startswith("rendering") and "img/s" in cell and "left" in cell
            page.screenshot(path=site.shots / "campaigns-running.png", full_page=True)
    results.append(render_planned_shard(res, plan["plan_key"], plan["shards"][2]["index"]))
    finalize_campaign(res, plan["plan_key"], results)
    page.wait_for_function("sel => document.querySelector(sel)?.dataset.status === 'success'", arg=row,
                           timeout=15_000)
    assert page.inner_text(f"{row} td.progress").startswith("done")
    assert "shards 3/3 · images 24/24" in page.inner_text(f"{row} td.progress")
    assert all_images_decoded(page) == []
    assert watched.errors == []


def test_the_models_page_shows_the_production_model_with_its_grid_and_engines(watched: Watched, site: Site) -> None:
    page = watched.page
    page.goto(f"{site.url}/campaigns/")
    page.click("a[href='models']")
    page.wait_for_url("**/campaigns/models")
    prod = site.res.lineage.resolve_alias("generator", "production")
    row = page.locator(f"tr[id='{prod['model_id']}']")
    assert "production" in row.inner_text() and "onnxruntime" in row.inner_text()
    assert row.locator("img.samples").count() == 1 and all_images_decoded(page) == []
    page.screenshot(path=site.shots / "models.png", full_page=True)
    assert watched.errors == []


def test_the_page_inside_airflow_and_in_dark_mode(browser: Any, site: Site) -> None:
    """The nav entry opens the page inside Airflow's own UI; with a dark colour scheme it turns dark."""
    dark = Watched(browser, site, scheme="dark")
    try:
        page = dark.page
        page.goto(f"{site.url}/campaigns/")
        assert page.evaluate("getComputedStyle(document.body).color") == "rgb(230, 237, 243)"  # the dark --fg
        page.screenshot(path=site.shots / "campaigns-dark.png", full_page=True)
        assert dark.errors == []
        page.goto(f"{site.url}/plugin/campaigns")
        frame = page.frame_locator("iframe")
        frame.locator("h1").wait_for(timeout=30_000)
        assert frame.locator("h1").inner_text() == "Campaigns"
        page.wait_for_timeout(500)
        page.screenshot(path=site.shots / "campaigns-in-airflow.png")
    finally:
        dark.close()
