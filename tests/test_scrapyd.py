"""Scheduling on scrapyd end to end: a real scrapyd, a real scrapyd-deploy egg, real jobs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import venv
from pathlib import Path

import pytest
import requests

from servers import free_port
from conftest import REPO
from imgcrawl import exitstatus
from test_crawl import expected_images
from test_example_spiders import SPIDER_FIXTURES, serve

USER, PASSWORD = "crawler", "s3cret-test"
POLL_LIMIT = 180  # seconds any wait on scrapyd may take


def scrapyd_python(root) -> str:
    """A venv of its own for scrapyd that sees the installed dependencies but not imgcrawl.

    A ``.pth`` line adds this environment's site-packages as a plain path, so the ``.pth``
    files inside it (the editable imgcrawl install) are not processed: scrapyd's jobs can
    only import imgcrawl from the deployed egg.
    """
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)


@pytest.fixture
def scrapyd(tmp_path):
    home = tmp_path / "scrapyd"
    home.mkdir()
    python = scrapyd_python(tmp_path / "scrapyd-venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCRAPY_SETTINGS_MODULE")}
    probe = subprocess.run([python, "-c", "import imgcrawl"], cwd=home, env=env, capture_output=True)
    assert probe.returncode != 0, "scrapyd's venv must not see imgcrawl outside the egg"
    port = free_port()
    (home / "scrapyd.conf").write_text(
        "[scrapyd]\n"
        "bind_address = 127.0.0.1\n"
        f"http_port = {port}\n"
        "poll_interval = 0.2\n"
        "eggs_dir = eggs\nlogs_dir = logs\nitems_dir = items\ndbs_dir = dbs\n"
        "max_proc = 2\n"
    )
    env.update(SCRAPYD_USERNAME=USER, SCRAPYD_PASSWORD=PASSWORD)
    log = open(home / "scrapyd.log", "wb")
    proc = subprocess.Popen([python, "-m", "scrapyd"], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "daemonstatus.json", timeout=2, auth=(USER, PASSWORD)).raise_for_status()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("scrapyd did not start:\n" + (home / "scrapyd.log").read_text()[-3000:])
                time.sleep(0.2)
        yield url, home
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def deploy(url: str, tmp_path) -> tuple[Path, dict]:
    """scrapyd-deploy from a copy of the project, as a user would from a checkout."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project)
    shutil.copytree(REPO / "imgcrawl", project / "imgcrawl", ignore=shutil.ignore_patterns("__pycache__"))
    # The project's own scrapy.cfg, pointed at this scrapyd (no trailing slash: scrapyd-client
    # appends "/schedule.json" to the URL as given); the credentials come from the environment.
    cfg = (REPO / "scrapy.cfg").read_text()
    assert "username = ${SCRAPYD_USERNAME}" in cfg and "password = ${SCRAPYD_PASSWORD}" in cfg
    (project / "scrapy.cfg").write_text(re.sub(r"(?m)^url = .*$", f"url = {url.rstrip('/')}", cfg))
    env = {**os.environ, "SCRAPYD_USERNAME": USER, "SCRAPYD_PASSWORD": PASSWORD}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "scrapyd_client.deploy", "--version", "1"],
        cwd=project, env=env, capture_output=True, text=True, timeout=POLL_LIMIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok", proc.stdout
    return project, env


def wait_finished(url: str, jobs: set[str]) -> dict[str, dict]:
    deadline = time.monotonic() + POLL_LIMIT
    while time.monotonic() < deadline:
        listing = requests.get(url + "listjobs.json", params={"project": "imgcrawl"},
                               auth=(USER, PASSWORD), timeout=10).json()
        finished = {job["id"]: job for job in listing["finished"] if job["id"] in jobs}
        if len(finished) == len(jobs):
            return finished
        time.sleep(0.5)
    pytest.fail(f"jobs not finished within {POLL_LIMIT} s: {listing}")


def test_deploy_and_schedule_on_scrapyd(scrapyd, demo_site, tmp_path):
    url, home = scrapyd
    assert requests.get(url + "daemonstatus.json", timeout=10).status_code == 401
    assert requests.post(url + "schedule.json", data={"project": "imgcrawl", "spider": "gallery"},
                         timeout=10).status_code == 401

    started = time.monotonic()
    project, env = deploy(url, tmp_path)
    store = tmp_path / "store"
    # As README's curl does: spider arguments as parameters, settings as setting=NAME=VALUE.
    schedule = {"project": "imgcrawl", "spider": "gallery", "url": demo_site.url("/gallery/"),
                "setting": [f"IMAGES_STORE={store}", "IMGCRAWL_WORKERS=1",
                            "IMGCRAWL_ALLOW_PRIVATE=True"]}  # the test site is on 127.0.0.1
    good = requests.post(url + "schedule.json", data=schedule, auth=(USER, PASSWORD), timeout=30).json()
    assert good["status"] == "ok", good
    # A built-in site profile, read from inside the egg; no IMAGES_STORE given.
    wp_start, wp_pages, wp_expected = SPIDER_FIXTURES["wordpress"]
    wp_site = serve(wp_pages)
    wordpress = requests.post(url + "schedule.json", auth=(USER, PASSWORD), timeout=30, data={
        "project": "imgcrawl", "spider": "gallery", "site": "wordpress", "url": wp_site.url(wp_start),
        "setting": ["IMGCRAWL_WORKERS=1", "IMGCRAWL_ALLOW_PRIVATE=True", "IMAGES_THUMBS={}"]}).json()
    assert wordpress["status"] == "ok", wordpress
    # As README's scrapyd-client line does, with a bad argument.
    client = subprocess.run(
        [sys.executable, "-m", "scrapyd_client", "schedule", "-p", "imgcrawl", "gallery",
         "--arg", f"url={demo_site.url('/gallery/')}", "--arg", "max_images=lots",
         "--arg", f"setting=IMAGES_STORE={tmp_path / 'bad-store'}"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )
    assert client.returncode == 0, client.stdout + client.stderr
    bad = {"jobid": client.stdout.strip().rsplit("=> ", 1)[1]}
    try:
        wait_finished(url, {good["jobid"], bad["jobid"], wordpress["jobid"]})
    finally:
        wp_site.stop()
    print(f"\nscrapyd: deploy + three jobs in {time.monotonic() - started:.1f} s")

    log = (home / "logs" / "imgcrawl" / "gallery" / f"{good['jobid']}.log").read_text()
    # The job runs with the brief log a user gets: the summary (with the close reason) is last.
    assert "Summary (finished): 18 images stored" in log and "Traceback" not in log, log[-3000:]
    items = [json.loads(line) for line in
             (home / "items" / "imgcrawl" / "gallery" / f"{good['jobid']}.jl").read_text().splitlines()]
    by_url = {item["url"]: item for item in items}
    for image_url, body in expected_images(demo_site).items():
        item = by_url[image_url]
        assert item["status"] == "downloaded", item
        assert (store / item["path"]).read_bytes() == body
        assert item["sha256"] == hashlib.sha256(body).hexdigest()
        assert (store / item["thumbs"]["small"]).stat().st_size > 0

    # A bad argument ends the job at once with the one-line reason in the job's log.
    bad_log = (home / "logs" / "imgcrawl" / "gallery" / f"{bad['jobid']}.log").read_text()
    errors = [line for line in bad_log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and "bad -a max_images='lots'" in errors[0], errors
    assert "Summary (bad_argument)" in bad_log and "Traceback" not in bad_log
    # scrapyd runs `scrapy crawl`, so it sees imgcrawl's exit status: the bad job "died".
    daemon_log = (home / "scrapyd.log").read_text()
    assert re.search(rf"Process finished: .*job='{good['jobid']}'", daemon_log), daemon_log[-3000:]
    assert re.search(rf"Process died: exitstatus={exitstatus.USAGE} .*job='{bad['jobid']}'", daemon_log), daemon_log[-3000:]

    # The profile was found in the egg, and without IMAGES_STORE the images went to
    # "images" in scrapyd's working directory (the jobs' too).
    wp_log = (home / "logs" / "imgcrawl" / "gallery" / f"{wordpress['jobid']}.log").read_text()
    assert "Site profile wordpress: WordPress gallery blocks" in wp_log, wp_log[-3000:]
    assert "Summary (finished)" in wp_log and "Traceback" not in wp_log, wp_log[-3000:]
    wp_items = [json.loads(line) for line in
                (home / "items" / "imgcrawl" / "gallery" / f"{wordpress['jobid']}.jl").read_text().splitlines()]
    assert {item["url"][len(wp_site.url("")):] for item in wp_items} == wp_expected
    for item in wp_items:
        assert item["status"] == "downloaded", item
        assert (home / "images" / item["path"]).read_bytes() == wp_site.files[item["url"][len(wp_site.url("")):]][1]
    # scrapyd's items_dir replaces FEEDS, so there is no per-image manifest: the contact
    # sheet shows this crawl and says so.
    assert not (home / "images" / "manifest.jsonl").exists()
    assert "this crawl only" in (home / "images" / "index.html").read_text()


def test_the_documented_scrapyd_host_install_has_every_dependency():
    """docs/scrapyd.md's pip line is the host's only install (the egg carries no
    dependencies): one missing there failed every image of every job."""
    docs = (REPO / "docs" / "scrapyd.md").read_text()
    line = next(line for line in docs.splitlines() if line.startswith('pip install "scrapyd'))
    named = set(re.findall(r'"([^"]+)"', line))
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(dependencies) <= named, set(dependencies) - named
