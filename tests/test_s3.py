"""IMAGES_STORE=s3://: real crawls into a real S3 server (SeaweedFS, started once for the
session), every object read back from the server and compared with what the site served."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from servers import free_port
from conftest import REPO, LocalSite, run_crawl
from seaweedfs import SeaweedFS
from test_distributed import shared_site, worker_settings  # noqa: F401 - shared_site is a fixture

from imgcrawl.demo import build_gallery

# The images of the one-page site, with the media type each object must have.
IMAGES = {
    "/img/photo001.jpg": "image/jpeg", "/img/photo002.png": "image/png", "/img/photo004.gif": "image/gif",
    "/img/photo006.webp": "image/webp", "/img/copy.jpg": "image/jpeg", "/img/logo.svg": "image/svg+xml",
}
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture
def site():
    """One page: four formats, a copy of one of them under another URL, an SVG and a broken JPEG."""
    files = build_gallery()
    files["/img/copy.jpg"] = files["/img/photo001.jpg"]
    files["/img/logo.svg"] = ("image/svg+xml", SVG)
    imgs = "".join(f'<img src="{path}" alt="{path}">' for path in [*IMAGES, "/img/broken.jpg"])
    files["/few/"] = ("text/html", f"<html><body>{imgs}</body></html>".encode())
    site = LocalSite(files).start()
    yield site
    site.stop()


def s3_crawl(tmp_path: Path, seaweed: SeaweedFS, url: str | None, store: str, *, identity: str = "crawler",
             cache: str = "cache", settings: dict | None = None, env: dict | None = None):
    """A crawl of ``url`` into ``store`` as ``identity``, its local index under ``tmp_path/cache``."""
    return run_crawl(tmp_path, *(["-a", f"url={url}"] if url else []), store=store,
                     settings={**seaweed.settings(identity), **(settings or {})},
                     env={"XDG_CACHE_HOME": str(tmp_path / cache), **(env or {})})


def finished(result) -> None:
    assert result.returncode == 0, result.log[-3000:]
    assert "'finish_reason': 'finished'" in result.log, result.log[-3000:]
    assert " ERROR: " not in result.log and "Traceback" not in result.log, result.log[-3000:]


def manifest(objects: dict, key: str) -> list[dict]:
    return [json.loads(line) for line in objects[key]["Body"].splitlines()]


def image_hits(site: LocalSite) -> dict[str, int]:
    return {path: site.hits[path] for path in IMAGES}


def test_crawl_into_a_bucket_byte_exact_and_recrawls_fetch_nothing(seaweed, site, tmp_path):
    bucket = seaweed.bucket("single")
    store, url = f"s3://{bucket}/crawl/", site.url("/few/")
    finished(first := s3_crawl(tmp_path, seaweed, url, store))
    objects = seaweed.objects(bucket)
    lines = manifest(objects, "crawl/manifest.jsonl")
    assert objects["crawl/manifest.jsonl"]["ContentType"] == "application/jsonl"
    by_url = {line["url"]: line for line in lines}
    assert set(by_url) == {site.url(p) for p in [*IMAGES, "/img/broken.jpg"]}, by_url
    assert by_url[site.url("/img/broken.jpg")]["reason"] == "undecodable"
    for path, media_type in IMAGES.items():
        line = by_url[site.url(path)]
        assert line["status"] == "downloaded", line
        body = site.files[path][1]
        original = objects[f"crawl/{line['path']}"]
        assert original["Body"] == body and line["sha256"] == hashlib.sha256(body).hexdigest()
        assert original["ContentType"] == media_type
        for thumb in line["thumbs"].values():
            assert objects[f"crawl/{thumb}"]["ContentType"] == "image/jpeg"
            assert objects[f"crawl/{thumb}"]["Body"][:3] == b"\xff\xd8\xff"
    assert set(by_url[site.url("/img/photo001.jpg")]["thumbs"]) == {"small"}
    # The SVG is shown by <img>, never opened as a page on the bucket's origin.
    assert objects[f"crawl/{by_url[site.url('/img/logo.svg')]['path']}"]["ContentDisposition"] == "attachment"
    # The same bytes under two URLs are stored once.
    assert by_url[site.url("/img/copy.jpg")]["path"] == by_url[site.url("/img/photo001.jpg")]["path"]
    assert len([key for key in objects if key.startswith("crawl/full/")]) == len(IMAGES) - 1
    # The contact sheet's links are relative to the prefix, so they work when it is served.
    sheet = objects["crawl/index.html"]
    assert sheet["ContentType"] == "text/html; charset=utf-8"
    assert f'"p":"{by_url[site.url("/img/photo002.png")]["path"]}"'.encode() in sheet["Body"]
    assert not (tmp_path / "s3:").exists() and "Contact sheet: s3://single/crawl/index.html" in first.log
    fetched = image_hits(site)
    assert set(fetched.values()) == {1}, fetched
    written = {key: obj["LastModified"] for key, obj in objects.items() if "/thumbs/" in key}

    # Again: nothing in the bucket is fetched again; the manifest has each image once, its
    # latest state, and each crawl's own lines are kept beside it.
    finished(again := s3_crawl(tmp_path, seaweed, url, store))
    assert image_hits(site) == fetched
    assert f"0 images stored (0.0 MB), {len(IMAGES)} already stored, 1 failed" in again.log
    objects = seaweed.objects(bucket)
    lines = manifest(objects, "crawl/manifest.jsonl")
    assert sorted(line["url"] for line in lines) == sorted(by_url)
    assert {line["status"] for line in lines} == {"uptodate", "failed"}
    crawls = sorted(key for key in objects if key.startswith("crawl/crawls/manifest-"))
    assert len(crawls) == 2 and [len(manifest(objects, key)) for key in crawls] == [len(by_url)] * 2

    # Another machine (an empty index): each original's metadata says what it is and that its
    # thumbnails are there, so only the one of the two copies whose object was not kept (which
    # one depends on which finished first) is fetched again.
    finished(elsewhere := s3_crawl(tmp_path, seaweed, url, store, cache="elsewhere"))
    copies = ("/img/photo001.jpg", "/img/copy.jpg")
    assert {p: n for p, n in image_hits(site).items() if p not in copies} == {p: 1 for p in IMAGES if p not in copies}
    assert sorted(site.hits[p] for p in copies) == [1, 2]
    assert f"'imgcrawl/adopted': {len(IMAGES) - 1}" in elsewhere.log
    # ... and taken as they are: no thumbnail made (and written) again from a read-back original.
    assert {key: obj["LastModified"] for key, obj in seaweed.objects(bucket, "crawl/thumbs/").items()} == written
    fetched = image_hits(site)

    # The bucket emptied under the index: the index is not believed, everything is stored again.
    seaweed.empty(bucket)
    finished(s3_crawl(tmp_path, seaweed, url, store))
    objects = seaweed.objects(bucket)
    for path in IMAGES:
        line = next(line for line in manifest(objects, "crawl/manifest.jsonl") if line["url"] == site.url(path))
        assert objects[f"crawl/{line['path']}"]["Body"] == site.files[path][1]
    assert image_hits(site) == {path: count + 1 for path, count in fetched.items()}


def test_two_workers_fill_one_bucket(seaweed, redis_url, shared_site, tmp_path):
    """The Redis frontier and index, every worker writing into the same bucket."""
    bucket = seaweed.bucket("shared")
    store = f"s3://{bucket}/gallery/"
    client = redis.Redis.from_url(redis_url)
    client.rpush("gallery:start_urls", shared_site.url("/gallery/"))

    def worker(name: str):
        home = tmp_path / name
        home.mkdir()
        settings = worker_settings(redis_url, name)
        return s3_crawl(home, seaweed, shared_site.url("/photo/p01.html") if name == "a" else None, store,
                        settings=settings)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(worker, ["a", "b"]))
    for result in results:
        finished(result)
    images = {p: body for p, (_, body) in shared_site.files.items() if p.startswith("/img/")}
    assert {p: shared_site.hits[p] for p in images} == dict.fromkeys(images, 1)
    assert set(shared_site.pages_by_worker) == {"a", "b"}, shared_site.pages_by_worker
    objects = seaweed.objects(bucket)
    # One manifest, each worker's lines added to it: every image listed once.
    lines = manifest(objects, "gallery/manifest.jsonl")
    assert sorted(line["url"] for line in lines) == sorted(shared_site.url(p) for p in images)
    for line in lines:
        body = images[line["url"].split(str(shared_site.port), 1)[1]]
        assert line["status"] == "downloaded" and objects[f"gallery/{line['path']}"]["Body"] == body
        assert f"gallery/{line['thumbs']['small']}" in objects
    assert len([key for key in objects if key.startswith("gallery/full/")]) == len(images)
    assert client.hlen("imgcrawl:index") == len(images)
    assert not (tmp_path / "a" / "cache").exists() and not (tmp_path / "b" / "cache").exists()
    client.close()


def cache_under_a_file(tmp_path: Path) -> dict:
    (tmp_path / "a-file").write_text("")
    return {"XDG_CACHE_HOME": str(tmp_path / "a-file" / "cache")}


@pytest.mark.parametrize("per_image", [True, False], ids=["merged", "appended"])
def test_crawls_ending_at_once_lose_no_manifest_line(seaweed, tmp_path, per_image):
    """Crawls ending together each bring their lines to the one manifest: read, merge (or
    extend), and write back only if nobody wrote in between, else again."""
    from scrapy.settings import Settings

    from imgcrawl.s3 import S3FeedStorage

    bucket = seaweed.bucket(f"ends-{'merged' if per_image else 'appended'}")
    settings = Settings(seaweed.settings())
    options = {"overwrite": False, "format": "jsonlines", "imgcrawl_per_image": per_image}

    def crawl_ends(worker: int) -> None:
        for n in range(6):
            feed = S3FeedStorage(f"s3://{bucket}/m/manifest.jsonl", settings, feed_options=options)
            file = feed.open(None)
            file.write(json.dumps({"url": f"http://x/{worker}-{n}", "page_url": f"http://x/{worker}"}).encode() + b"\n")
            feed._store(file)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(crawl_ends, range(3)))
    lines = manifest(seaweed.objects(bucket), "m/manifest.jsonl")
    assert sorted(line["url"] for line in lines) == sorted(f"http://x/{w}-{n}" for w in range(3) for n in range(6))


def hidden_botocore(tmp_path: Path) -> dict:
    stub = tmp_path / "nobotocore" / "botocore"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('botocore is hidden by this test')\n")
    return {"PYTHONPATH": f"{stub.parent}{os.pathsep}{REPO}"}


# (case, identity, settings, environment, the words of the one ERROR line, finish reason)
STORE_ERRORS = [
    ("unknown key", "crawler", {"AWS_ACCESS_KEY_ID": "nobody"}, None,
     ["InvalidAccessKeyId", "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"], "store_not_writable"),
    ("wrong secret", "crawler", {"AWS_SECRET_ACCESS_KEY": "wrong"}, None,
     ["SignatureDoesNotMatch", "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"], "store_not_writable"),
    ("no such bucket", "crawler", {"IMAGES_STORE": "s3://never-made/x/"}, None,
     ["NoSuchBucket", "create the bucket (aws s3 mb s3://never-made)"], "store_not_writable"),
    ("read-only key", "reader", {}, None,
     ["AccessDenied", "allow s3:ListBucket, s3:GetObject, s3:PutObject"], "store_not_writable"),
    ("nothing listening", "crawler", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{free_port}"}, None,
     ["cannot reach IMAGES_STORE s3://errors/x/ at http://127.0.0.1:", "check AWS_ENDPOINT_URL"], "store_unreachable"),
    ("index not writable", "crawler", {}, cache_under_a_file,
     ["cannot write the index of IMAGES_STORE s3://errors/x/ at ", "a-file/cache/imgcrawl/s3-errors-",
      "-s IMGCRAWL_INDEX=/path/to/index.sqlite"], "store_not_writable"),
    ("file-name template", "crawler", {"IMGCRAWL_FILE_NAME": "{host}/{name}.{ext}"}, None,
     ["IMGCRAWL_FILE_NAME needs IMAGES_STORE to be a local directory, not s3://errors/x/"], "bad_setting"),
    ("no botocore", "crawler", {}, hidden_botocore,
     ["an S3 store needs botocore: pip install 'imgcrawl[s3]'"], "bad_setting"),
]


@pytest.mark.parametrize(("case", "identity", "settings", "env", "words", "reason"), STORE_ERRORS,
                         ids=[case[0] for case in STORE_ERRORS])
def test_a_store_that_cannot_be_used_is_one_line(seaweed, site, tmp_path, case, identity, settings, env, words, reason):
    if "errors" not in {b["Name"] for b in seaweed.client().list_buckets()["Buckets"]}:
        seaweed.bucket("errors")
    settings = {"IMAGES_STORE": "s3://errors/x/", **settings}
    settings = {k: v.replace("{free_port}", str(free_port())) for k, v in settings.items()}
    result = s3_crawl(tmp_path, seaweed, site.url("/few/"), settings.pop("IMAGES_STORE"), identity=identity,
                      settings=settings, env=env(tmp_path) if env else None)
    errors = [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, result.log[-3000:]
    assert all(word in errors[0] for word in words), errors[0]
    assert f"'finish_reason': '{reason}'" in result.log and "Traceback" not in result.log
    assert result.returncode == (2 if reason == "bad_setting" else 4)  # bad usage; the store failed
    if case == "read-only key":
        # Found out by the first upload: said once, and the crawl stops.
        assert "Image failed (store-not-writable)" not in result.log
    else:
        assert not any(site.hits[p] for p in IMAGES), dict(site.hits)
    if case == "no such bucket":  # not made by the crawl either
        assert "never-made" not in {b["Name"] for b in seaweed.client().list_buckets()["Buckets"]}


def test_aws_verify_from_the_command_line(seaweed, site, tmp_path):
    """Over HTTPS with a certificate of the server's own CA: refused by default in one line;
    -s AWS_VERIFY=False (a string) turns the check off; the CA's file turns it on for it."""
    bucket = seaweed.bucket("tls")
    https = {"AWS_ENDPOINT_URL": seaweed.https_endpoint}
    refused = s3_crawl(tmp_path, seaweed, site.url("/few/"), f"s3://{bucket}/a/", settings=https)
    assert "'finish_reason': 'store_unreachable'" in refused.log
    assert "give -s AWS_VERIFY=/path/to/ca.pem" in refused.log
    for name, verify in (("off", "False"), ("ca", str(seaweed.ca))):
        finished(s3_crawl(tmp_path, seaweed, site.url("/few/"), f"s3://{bucket}/{name}/",
                          settings={**https, "AWS_VERIFY": verify}))
        assert f"{name}/manifest.jsonl" in seaweed.objects(bucket, f"{name}/manifest.jsonl")


class Throttling(ThreadingHTTPServer):
    """Between the crawl and the S3 server: the first PUT of each original gets S3's 503
    SlowDown, every other request goes through as it came (signed for this host)."""

    daemon_threads = True

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.refused: set[str] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            throttle = self.command == "PUT" and "/full/" in self.path and self.path not in self.server.refused
            self.server.refused.add(self.path)
        if throttle:
            answer = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self._reply(503, [("Content-Type", "application/xml")], answer)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=30)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in ("expect", "connection"):
                upstream.putheader(name, value)
        upstream.endheaders(body)
        response = upstream.getresponse()
        self._reply(response.status, response.getheaders(), response.read())
        upstream.close()

    def _reply(self, status: int, headers, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    def log_message(self, *args):
        pass


def test_throttled_uploads_are_retried(seaweed, site, tmp_path):
    """Also: a manifest of the ordinary kind (not per image) in the bucket is appended to, and
    the contact sheet, of this crawl's items then, is uploaded too."""
    bucket = seaweed.bucket("throttled")
    proxy = Throttling(seaweed.ports["s3"])
    appended = json.dumps({"%(images_store)s/manifest.jsonl": {"format": "jsonlines", "overwrite": False}})
    try:
        started = time.monotonic()
        finished(s3_crawl(tmp_path, seaweed, site.url("/few/"), f"s3://{bucket}/t/",
                          settings={"AWS_ENDPOINT_URL": proxy.endpoint, "FEEDS": appended}))
        print(f"\nthrottled crawl: {time.monotonic() - started:.1f} s, {len(proxy.refused)} PUTs refused once each")
    finally:
        proxy.shutdown()
        proxy.server_close()
    objects = seaweed.objects(bucket)
    stored = [line for line in manifest(objects, "t/manifest.jsonl") if line["status"] == "downloaded"]
    assert len(stored) == len(IMAGES)
    for line in stored:
        assert objects[f"t/{line['path']}"]["Body"] == site.files[line["url"].split(str(site.port), 1)[1]][1]
    assert len(proxy.refused) >= len(IMAGES) - 1  # each original (the copy's too, then removed)
    assert b"this crawl only" in objects["t/index.html"]["Body"]
