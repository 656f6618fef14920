"""Security: nothing written outside IMAGES_STORE, the SSRF guard, quotas."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from conftest import LocalSite, run_crawl
from imgcrawl import exitstatus
from imgcrawl import settings as defaults
from imgcrawl.guard import is_public
from imgcrawl.failures import Failed
from imgcrawl.stores import store_path


def jpeg(seed: int) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (40 + seed, 30), (seed * 11 % 256, 60, 120)).save(buf, "JPEG")
    return buf.getvalue()


# -- paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("relative", [
    "../evil.jpg", "full/../../evil.jpg", "/etc/evil.jpg", "full/\x00.jpg",
    "full/" + "a" * 300 + ".jpg", "thumbs/small/../../../evil.jpg",
])
def test_store_path_refuses_anything_outside_the_store(tmp_path, relative):
    with pytest.raises(Failed) as caught:
        store_path(tmp_path / "store", relative)
    assert caught.value.reason == "bad-path"


def test_store_path_refuses_a_symlink_out_of_the_store(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "full").symlink_to(tmp_path)
    with pytest.raises(Failed):
        store_path(tmp_path / "store", "full/x.jpg")


HOSTILE_PIPELINE = '''
from urllib.parse import unquote

from imgcrawl.pipelines import GalleryImagesPipeline

class TemplatePipeline(GalleryImagesPipeline):
    """A filename template taken from the URL and Content-Disposition, as a careless one would."""

    def file_path(self, request, response=None, info=None, *, item=None):
        name = unquote(request.url.rsplit("name=", 1)[-1])
        if response is not None and b"filename=" in response.headers.get("Content-Disposition", b""):
            name = response.headers["Content-Disposition"].decode().split("filename=", 1)[1]
        return name if name.startswith("/") else "full/" + name
'''


def test_hostile_names_never_escape_the_store(tmp_path):
    body = jpeg(1)
    names = ["..%2F..%2Fescaped1.jpg", "%2Ftmp%2Fescaped2.jpg", "a" * 300 + ".jpg", "ok.jpg"]
    page = "".join(f'<img src="/img?name={n}">' for n in names) + '<img src="/cd.jpg?name=x.jpg">'
    site = LocalSite({"/": ("text/html", page.encode()), "/cd.jpg?name=x.jpg": ("image/jpeg", body),
                      **{f"/img?name={n}": ("image/jpeg", body) for n in names}})

    def disposition(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Disposition", "attachment; filename=../../escaped3.jpg")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    site.handlers["/cd.jpg?name=x.jpg"] = disposition
    site.start()
    (tmp_path / "evilpipe.py").write_text(HOSTILE_PIPELINE)  # importable: cwd is on sys.path
    store = tmp_path / "deep" / "store"
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/')}", store=store, settings={
            "ITEM_PIPELINES": json.dumps({"evilpipe.TemplatePipeline": 1}),
            "IMGCRAWL_WORKER_POOL": "thread",
        })
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    reasons = {line["url"].rsplit("name=", 1)[-1]: (line["status"], line.get("reason")) for line in result.manifest()}
    assert reasons.pop("ok.jpg") == ("downloaded", None)
    assert set(reasons.values()) == {("failed", "bad-path")}, reasons
    assert "Traceback" not in result.log
    escaped = [p for p in tmp_path.rglob("escaped*")] + list(Path("/tmp").glob("escaped2.jpg"))
    assert escaped == []
    assert [p.name for p in (store / "full").iterdir()] == ["ok.jpg"]


# -- SSRF guard ----------------------------------------------------------------------

@pytest.mark.parametrize(("address", "public"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.9", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("93.184.216.34", True), ("2606:4700::1111", True),
])
def test_is_public(address, public):
    assert is_public(address) is public


def test_guard_refuses_a_name_resolving_to_loopback_by_default(tmp_path):
    site = LocalSite({"/": ("text/html", b'<img src="/a.jpg">'), "/a.jpg": ("image/jpeg", jpeg(2))}).start()
    start = f"http://localhost:{site.port}/"
    try:
        result = run_crawl(tmp_path, "-a", f"url={start}", settings={"IMGCRAWL_ALLOW_PRIVATE": False})
    finally:
        site.stop()
    assert result.returncode == exitstatus.NOTHING_CRAWLED  # the start URL was refused
    assert sum(site.hits.values()) == 0  # not even robots.txt
    refused = [line for line in result.log.splitlines() if "private-address" in line and "WARNING" in line]
    assert len(refused) == 1 and start in refused[0] and "localhost is 127.0.0.1" in refused[0]
    assert "'imgcrawl/failed/private-address': 1" in result.log
    assert "Traceback" not in result.log


# 127.0.0.1 stands in for "the public internet" (the only address a test can serve on);
# every other non-public address is refused by the real guard.
GUARD_SUBCLASS = '''
from imgcrawl.guard import PrivateAddressGuard

class LoopbackIsPublic(PrivateAddressGuard):
    def allowed(self, address):
        return address == "127.0.0.1" or super().allowed(address)
'''


def test_guard_checks_every_image_and_every_redirect_hop(tmp_path):
    good = jpeg(3)
    port_holder = {}
    page = ('<img src="/good.jpg"><img src="/to-metadata.jpg"><img src="/to-lan.jpg">'
            '<img src="http://169.254.169.254/latest/meta-data.jpg"><img src="http://[::1]/x.jpg">'
)
    site = LocalSite({"/good.jpg": ("image/jpeg", good)})

    def redirect(target):
        def handler(h):
            h.send_response(302)
            h.send_header("Location", target.format(port=port_holder["port"]))
            h.send_header("Content-Length", "0")
            h.end_headers()
        return handler

    site.handlers.update({
        "/to-metadata.jpg": redirect("http://169.254.169.254/latest/meta-data/iam"),
        "/to-lan.jpg": redirect("http://127.0.0.2:{port}/good.jpg"),
    })
    site.start()
    port_holder["port"] = site.port
    site.files["/"] = ("text/html", page.format(port=site.port).encode())
    (tmp_path / "guardtest.py").write_text(GUARD_SUBCLASS)
    middlewares = {**defaults.DOWNLOADER_MIDDLEWARES, "imgcrawl.guard.PrivateAddressGuard": None,
                   "guardtest.LoopbackIsPublic": 60}
    try:
        result = run_crawl(tmp_path, "-a", f"url={site.url('/')}", settings={
            "IMGCRAWL_ALLOW_PRIVATE": False, "DOWNLOADER_MIDDLEWARES": json.dumps(middlewares),
            "IMGCRAWL_WORKER_POOL": "thread", "DOWNLOAD_TIMEOUT": 2, "RETRY_TIMES": 0,
        })
    finally:
        site.stop()
    assert result.returncode == 0, result.log[-3000:]
    lines = {line["url"]: line for line in result.manifest()}
    assert lines[site.url("/good.jpg")]["status"] == "downloaded"
    refused = [url for url, line in lines.items() if line.get("reason") == "private-address"]
    assert sorted(refused) == sorted([
        site.url("/to-metadata.jpg"), site.url("/to-lan.jpg"), "http://169.254.169.254/latest/meta-data.jpg",
        "http://[::1]/x.jpg",
    ])
    assert site.hits["/good.jpg"] == 1  # the redirect to 127.0.0.2 never connected
    assert "Traceback" not in result.log


# -- quotas --------------------------------------------------------------------------

def test_max_images_quota_closes_the_crawl(demo_site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}",
                       settings={"IMGCRAWL_MAX_IMAGES": 5})
    assert "'finish_reason': 'imgcrawl_max_images'" in result.log
    assert len(list((result.store / "full").iterdir())) == 5
    quota = [line for line in result.log.splitlines() if "Quota reached" in line]
    assert len(quota) == 1 and "IMGCRAWL_MAX_IMAGES=5" in quota[0]
    assert "Traceback" not in result.log and " ERROR: " not in result.log


def test_max_bytes_quota_is_never_overshot(demo_site, tmp_path):
    limit = 200_000
    result = run_crawl(tmp_path, "-a", f"url={demo_site.url('/gallery/')}",
                       settings={"IMGCRAWL_MAX_BYTES": limit})
    assert "'finish_reason': 'imgcrawl_max_bytes'" in result.log
    stored = [p.stat().st_size for p in (result.store / "full").iterdir()]
    assert stored and sum(stored) <= limit
    assert len([line for line in result.log.splitlines() if "Quota reached" in line]) == 1
    assert "Traceback" not in result.log
