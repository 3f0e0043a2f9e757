"""The dashboard in a real headless browser (Debian's chromium driven by Playwright) against
`dsgen serve --embedded` run as a subprocess with the builtin tiny-random model: sign in,
submit (a bad spec first: the error shows next to the field), watch the progress bar reach
100 %, open the gallery (overlay images load), click a sample for its lineage, cancel a running
job, the schedules and datasets pages, and `dsgen datasets pull`.

chromium missing is a failure, not a skip (CI installs it: `apt-get install -y chromium`).
With DSGEN_SCREENSHOT=docs/dashboard.png the job page is saved there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DSGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=window.__pwned=1>"
GOOD = f"""name: ui-cats
model: builtin:tiny-random
classes:
  - name: cat
  - name: dog
prompts:
  templates: ["a photo of a {{class}} on the {{place}}"]
  slots: {{place: [grass, sofa, "{XSS}"]}}
num_images: 8
seed: 3
generation: {{width: 32, height: 32, steps: 2, batch_size: 4}}
export: {{formats: [coco, yolo]}}
"""
BAD = GOOD.replace("steps: 2", "steps: 0")
BIG = {"name": "long-one", "model": "builtin:tiny-random", "classes": [{"name": "cat"}], "num_images": 2000,
       "generation": {"width": 32, "height": 32, "steps": 2, "batch_size": 4}, "export": {"formats": ["coco"]}}


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install it (apt-get install -y chromium) or set DSGEN_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install playwright (no `playwright install` needed)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DSGEN_SHARD_SIZE": "16",
           "DSGEN_SCHEDULE_TICK_S": "2", "DSGEN_LOG_FORMAT": "json"}
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", "--embedded", "--data", str(data),
                             "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=120, proc=proc)
        key = subprocess.run([sys.executable, "-m", "worker.cli", "keys", "create", "--tenant", "ui",
                              "--database-url", f"sqlite:///{data / 'dsgen.db'}"], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        yield {"url": f"http://127.0.0.1:{port}", "key": key, "log": data / "server.log"}
    finally:
        stop_process(proc, timeout=20)
        log.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    # CSP violations, JS exceptions, failed fetches would all show up here
    expected = ("status of 401", "status of 422")  # the wrong key and the bad spec/cron, on purpose
    assert not [p for p in problems if not any(e in p for e in expected)], problems


def sign_in(page, server):
    page.goto(server["url"] + "/")
    page.fill("#api-key", "dsg_wrong_key")
    page.click("#signin")
    page.wait_for_selector("#key-error:has-text('unknown or revoked')")
    page.fill("#api-key", server["key"])
    page.click("#signin")
    page.wait_for_selector("#jobs")
    assert server["key"] not in page.url
    assert page.evaluate("sessionStorage.getItem('dsgen.apiKey')") == server["key"]


def api(server):
    return httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {server['key']}"}, timeout=30)


def test_submit_watch_gallery_lineage_and_screenshot(page, server, tmp_path):
    sign_in(page, server)
    page.click("a[data-nav=submit]")
    page.fill("#spec-text", BAD)
    page.fill("#dataset", "ui-cats")
    page.click("#submit")
    err = page.wait_for_selector("#spec-errors li[data-field='generation.steps']")
    assert "line 11" in err.inner_text()  # next to the field: its path and its line in the text
    page.fill("#spec-text", GOOD)
    page.click("#submit")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(".progress[aria-valuenow='100']", timeout=240_000)
    page.wait_for_selector("h1 .status[data-status=succeeded]", timeout=120_000)
    # gallery: overlays load, boxes carry class names; user text stays text
    page.wait_for_function("() => document.querySelectorAll('#gallery img.overlay').length === 8", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img.overlay')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector("#gallery img.overlay", "i => i.naturalWidth") == 32
    assert page.evaluate("window.__pwned") is None
    captions = page.eval_on_selector_all("#gallery .sample .caption", "xs => xs.map(x => x.textContent)")
    hostile = next(i for i, c in enumerate(captions) if XSS in c)  # user text shown as text
    page.click(f"#gallery .sample >> nth={hostile}")
    lineage = page.wait_for_selector("#lineage")
    assert page.inner_text("#lineage-model").startswith("builtin:tiny-random")  # with its revision
    with api(server) as c:
        samples = c.get(f"/v1/jobs/{job_id}/samples").json()["items"]
    assert page.inner_text("#lineage-prompt") == samples[hostile]["prompt"] and XSS in samples[hostile]["prompt"]
    assert page.inner_text("#lineage-seed") == str(samples[hostile]["seed"])
    assert lineage.is_visible()
    assert page.locator("#legend .swatch.ignore").count() == 1 and page.locator("#legend").inner_text().count("cat") == 1
    page.wait_for_selector("#exports a.export")  # loaded when the poll sees the job succeed
    formats = sorted(page.eval_on_selector_all("#exports a.export", "xs => xs.map(x => x.dataset.format)"))
    assert formats == ["coco", "yolo"]
    assert page.locator("#shards tbody tr").count() == 1
    shot = os.environ.get("DSGEN_SCREENSHOT")
    if shot:
        path = Path(shot) if Path(shot).is_absolute() else REPO / shot
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=False)
    # the jobs list shows it at 100 %
    page.click("a[data-nav=jobs]")
    page.wait_for_selector(f"tr[data-job='{job_id}'] .progress[aria-valuenow='100']")
    # datasets: v1 is there, and the CLI pulls it
    page.click("a[data-nav=datasets]")
    page.click("#datasets a:has-text('ui-cats')")
    page.wait_for_selector("#versions td:has-text('v1')")
    from click.testing import CliRunner

    from worker.cli import _register, cli

    _register()
    out = tmp_path / "pulled"
    res = CliRunner().invoke(cli, ["datasets", "pull", "ui-cats@latest", "--format", "coco", "--out", str(out),
                                   "--server", server["url"]], env={"DSGEN_API_KEY": server["key"]})
    assert res.exit_code == 0, res.output
    coco = json.loads(next(out.rglob("instances_*.json")).read_text())
    assert coco["images"]
    res = CliRunner().invoke(cli, ["datasets", "list", "--server", server["url"]], env={"DSGEN_API_KEY": server["key"]})
    assert "ui-cats" in res.output and "latest v1" in res.output


def test_cancel_a_running_job(page, server):
    sign_in(page, server)
    with api(server) as c:
        job = c.post("/v1/jobs", json=BIG).json()
    page.goto(f"{server['url']}/#/jobs/{job['id']}")
    page.wait_for_selector("h1 .status[data-status=running]", timeout=120_000)
    # Cancel mid-run: after the bar has moved (samples done), before the job can finish.
    page.wait_for_function("() => Number(document.querySelector('.progress').title.split(' / ')[0]) > 0",
                           timeout=180_000)
    page.click("#cancel")
    page.wait_for_selector("h1 .status[data-status=cancelled]", timeout=120_000)
    assert page.is_disabled("#cancel")
    with api(server) as c:
        done = c.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "cancelled" and 0 < done["progress"]["done"] < BIG["num_images"]
    assert "cancelled" in done["progress"]["shards"]


def test_schedules_page_shows_field_errors_and_creates(page, server):
    sign_in(page, server)
    page.click("a[data-nav=schedules]")
    page.fill("#sch-name", "nightly-ui")
    page.fill("#sch-cron", "0 25 * * *")
    page.fill("#sch-spec", GOOD)
    page.click("#create-schedule")
    err = page.wait_for_selector(".field-error[data-for=cron]:not(:empty)")
    assert "cron" in err.inner_text() and page.get_attribute("#sch-cron", "class") == "invalid"
    page.fill("#sch-cron", "*/5 * * * *")
    page.fill("#sch-timezone", "Europe/Berlin")
    page.click("#create-schedule")
    row = page.wait_for_selector("#schedules tr:has-text('nightly-ui')")
    assert "*/5 * * * *" in row.inner_text() and "Europe/Berlin" in row.inner_text()
    assert page.inner_text(".field-error[data-for=cron]") == ""
