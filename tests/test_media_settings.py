"""Scrapy's media-pipeline settings, honoured or refused in one line, never ignored: the
minimum image size (IMAGES_MIN_WIDTH/HEIGHT), the per-pipeline names a subclass reads
(MYPIPELINE_IMAGES_THUMBS ...), and settings no pipeline can use."""

from __future__ import annotations

import io
import json

import pytest
from conftest import LocalSite, run_crawl
from PIL import Image


def image(size: tuple[int, int], fmt: str, orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, (200, 40, 90)).save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


# path -> (bytes, stored under IMAGES_MIN_WIDTH=250 and IMAGES_MIN_HEIGHT=200?)
IMAGES = {
    "/img/wide.jpg": (image((400, 300), "JPEG"), True),
    "/img/exact.png": (image((250, 200), "PNG"), True),
    "/img/tiny.png": (image((100, 50), "PNG"), False),
    # 300x200 pixels, shown 200x300 (EXIF: rotate 90): too narrow as displayed, as Scrapy judges.
    "/img/turned.jpg": (image((300, 200), "JPEG", orientation=6), False),
}


@pytest.fixture
def site():
    page = "".join(f'<img src="{path}">' for path in IMAGES)
    files = {"/": ("text/html", page.encode()), **{p: ("image/jpeg", body) for p, (body, _) in IMAGES.items()}}
    site = LocalSite(files).start()
    yield site
    site.stop()


def outcomes(result, site) -> dict[str, tuple[str, str | None]]:
    return {line["url"].split(str(site.port), 1)[1]: (line["status"], line.get("reason")) for line in result.manifest()}


def test_images_under_the_minimum_size_are_not_stored(site, tmp_path):
    result = run_crawl(tmp_path, "-a", f"url={site.url('/')}",
                       settings={"IMAGES_MIN_WIDTH": 250, "IMAGES_MIN_HEIGHT": 200})
    assert result.returncode == 0 and "Traceback" not in result.log, result.log[-3000:]
    assert outcomes(result, site) == {
        path: ("downloaded", None) if kept else ("failed", "too-small") for path, (_, kept) in IMAGES.items()
    }
    assert "'imgcrawl/failed/too-small': 2" in result.log
    assert "Image failed (too-small): " + site.url("/img/turned.jpg") in result.log
    assert "200x300 is under IMAGES_MIN_WIDTH x IMAGES_MIN_HEIGHT 250x200" in result.log
    assert len(list((result.store / "full").iterdir())) == 2  # nothing written for the small ones
    assert len(list((result.store / "thumbs" / "small").iterdir())) == 2


PIPELINE = '''
from imgcrawl.pipelines import GalleryImagesPipeline

class MyPipeline(GalleryImagesPipeline):
    pass
'''


def my_pipeline(tmp_path, **settings) -> dict:
    (tmp_path / "mypipes.py").write_text(PIPELINE)  # importable: the crawl's cwd is on sys.path
    return {"ITEM_PIPELINES": json.dumps({"mypipes.MyPipeline": 1}), **settings}


def test_a_subclass_reads_its_own_setting_names(site, tmp_path):
    settings = my_pipeline(tmp_path, MYPIPELINE_IMAGES_THUMBS=json.dumps({"tiny": [32, 32]}),
                           MYPIPELINE_IMAGES_MIN_WIDTH=250)
    first = run_crawl(tmp_path, "-a", f"url={site.url('/')}", settings=settings)
    assert first.returncode == 0 and "Traceback" not in first.log, first.log[-3000:]
    assert outcomes(first, site) == {  # MIN_WIDTH alone: the turned one is too narrow, the exact one is not
        "/img/wide.jpg": ("downloaded", None), "/img/exact.png": ("downloaded", None),
        "/img/tiny.png": ("failed", "too-small"), "/img/turned.jpg": ("failed", "too-small"),
    }
    thumbs = first.store / "thumbs"
    assert [p.name for p in thumbs.iterdir()] == ["tiny"]  # not IMAGES_THUMBS' "small"
    assert all(Image.open(p).size[0] <= 32 for p in (thumbs / "tiny").iterdir())
    # MYPIPELINE_IMAGES_EXPIRES=0: every stored image is out of date at once, fetched again.
    again = run_crawl(tmp_path, "-a", f"url={site.url('/')}", settings={**settings, "MYPIPELINE_IMAGES_EXPIRES": 0})
    assert again.returncode == 0, again.log[-3000:]
    assert site.hits["/img/wide.jpg"] == 2 and "2 images stored" in again.log


@pytest.mark.parametrize(("settings", "words"), [
    ({"MYPIPELINE_IMAGES_STORE": "elsewhere"},
     "MYPIPELINE_IMAGES_STORE: no pipeline reads IMAGES_STORE under its own name; set IMAGES_STORE"),
    ({"MYPIPELINE_IMGCRAWL_WORKERS": 2}, "MYPIPELINE_IMGCRAWL_WORKERS: no pipeline reads IMGCRAWL_WORKERS"),
    ({"IMAGES_THUMBS": "{small: 256}"}, "IMAGES_THUMBS is not valid JSON"),
    ({"IMGCRAWL_WORKER_POOL": "fork"}, "IMGCRAWL_WORKER_POOL='fork': use 'process' or 'thread'"),
    ({"IMAGES_STORE": "ftp://example.com/images"}, "imgcrawl stores to a local directory or s3://BUCKET/PREFIX/"),
    ({"IMAGES_STORE": "s3://bucket/x", "AWS_VERIFY": "/no/such/ca.pem"},
     "AWS_VERIFY='/no/such/ca.pem' is neither True/False nor a CA bundle file"),
])
def test_a_setting_no_pipeline_can_use_stops_the_crawl_in_one_line(site, tmp_path, settings, words):
    """Scrapy would disable the pipeline with a WARNING and crawl on, storing nothing."""
    store = settings.pop("IMAGES_STORE", None)
    result = run_crawl(tmp_path, "-a", f"url={site.url('/')}", store=store, settings=my_pipeline(tmp_path, **settings))
    errors = [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and words in errors[0], result.log[-3000:]
    assert "'finish_reason': 'bad_setting'" in result.log and "Traceback" not in result.log
    assert result.returncode == 2  # bad usage, as a bad argument
    assert not any(site.hits[p] for p in IMAGES)
