"""A small offline gallery site, and ``imgcrawl demo`` that crawls it.

The site is generated with Pillow (seeded, so the same every time) and served by Twisted
web on 127.0.0.1 at a free port, in the same reactor as the crawl: no network needed.
The markup uses the patterns real galleries use: numbered pagination with rel=next,
srcset, <picture>, lazy-load data-src, thumbnails linking to full-size files and to
detail pages, and one broken image to show how failures are reported.
"""

from __future__ import annotations

import html
import json
import random
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw

CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


def _picture(rng: random.Random, size: tuple[int, int], label: str) -> Image.Image:
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, top)
    draw = ImageDraw.Draw(image)
    for y in range(0, size[1], 4):
        t = y / size[1]
        draw.rectangle(
            (0, y, size[0], y + 4),
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)),
        )
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(8, max(9, min(size) // 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    draw.text((10, 10), label, fill=(255, 255, 255))
    return image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def make_image(rng: random.Random, kind: str, label: str) -> bytes:
    """One demo image of ``kind`` (jpg, png with alpha, animated gif, webp)."""
    size = (rng.randrange(480, 900), rng.randrange(360, 700))
    picture = _picture(rng, size, label)
    if kind == "jpg":
        return encode(picture, "JPEG", quality=88)
    if kind == "png":
        rgba = picture.convert("RGBA")
        alpha = Image.new("L", size, 0)
        ImageDraw.Draw(alpha).ellipse((0, 0, size[0], size[1]), fill=255)
        rgba.putalpha(alpha)
        return encode(rgba, "PNG")
    if kind == "gif":
        frames = [_picture(rng, (size[0] // 2, size[1] // 2), f"{label} {i}") for i in range(3)]
        buf = BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
        return buf.getvalue()
    return encode(picture, "WEBP", quality=80)


def _page(title: str, body: str, head: str = "") -> bytes:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"{head}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()


def _listing(page: int) -> str:
    return "/gallery/" if page == 1 else f"/gallery/?page={page}"


def build_gallery(seed: int = 7, pages: int = 3, per_page: int = 6) -> dict[str, tuple[str, bytes]]:
    """The demo site as ``{path: (content_type, body)}``.

    Page N lists ``per_page`` images, each shown with a different markup pattern, and
    detail pages hold one more image each. ``/img/broken.jpg`` is deliberately corrupt.
    """
    rng = random.Random(seed)
    files: dict[str, tuple[str, bytes]] = {}
    kinds = ("jpg", "png", "jpg", "gif", "jpg", "webp")
    n = 0
    for page in range(1, pages + 1):
        cells = []
        for i in range(per_page):
            n += 1
            kind = kinds[i % len(kinds)]
            name = f"photo{n:03d}"
            full = f"/img/{name}.{kind}"
            files[full] = (CONTENT_TYPES[kind], make_image(rng, kind, name))
            alt = f"Photo {n}"
            pattern = i % 5
            if pattern == 0:  # plain src
                cells.append(f'<img src="../img/{name}.{kind}" alt="{alt}">')
            elif pattern == 1:  # srcset: the largest candidate is the real file
                small = f"/img/{name}-small.jpg"
                files[small] = ("image/jpeg", make_image(rng, "jpg", name + " small"))
                cells.append(
                    f'<img src="{small}" srcset="{small} 320w, {full} 1200w" '
                    f'sizes="50vw" alt="{alt}">'
                )
            elif pattern == 2:  # lazy-load: placeholder in src, the real file in data-src
                cells.append(
                    '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" '
                    f'data-src="{full}" class="lazyload" alt="{alt}">'
                )
            elif pattern == 3:  # thumbnail linking to the full-size file
                thumb = f"/img/{name}-thumb.jpg"
                files[thumb] = ("image/jpeg", make_image(rng, "jpg", name + " thumb"))
                cells.append(f'<a href="{full}"><img src="{thumb}" alt="{alt}"></a>')
            else:  # thumbnail linking to a detail page that shows the full image
                thumb = f"/img/{name}-thumb.jpg"
                files[thumb] = ("image/jpeg", make_image(rng, "jpg", name + " thumb"))
                detail = f"/photo/{name}.html"
                files[detail] = (
                    "text/html; charset=utf-8",
                    _page(alt, f'<picture><source srcset="{full} 2x" type="image/{kind}">'
                               f'<img src="{full}" alt="{alt}"></picture>'
                               '<p><a href="/gallery/">Back to the gallery</a></p>'),
                )
                cells.append(f'<a href="{detail}"><img src="{thumb}" alt="{alt}"></a>')
        if page == pages:
            cells.append('<img src="/img/broken.jpg" alt="A broken image">')
        nav = " ".join(
            f'<a href="{_listing(p)}">{p}</a>' for p in range(1, pages + 1) if p != page
        )
        head = f'<link rel="next" href="{_listing(page + 1)}">' if page < pages else ""
        body = f'<div class="grid">{"".join(cells)}</div><nav>{nav}</nav>'
        files[_listing(page)] = ("text/html; charset=utf-8", _page(f"Demo gallery, page {page}", body, head))
    good = files["/img/photo001.jpg"][1]
    files["/img/broken.jpg"] = ("image/jpeg", good[: len(good) // 3])  # truncated JPEG
    files["/robots.txt"] = ("text/plain", b"User-agent: *\nDisallow: /private/\n")
    files["/"] = ("text/html; charset=utf-8", _page("Demo", '<a href="/gallery/">Gallery</a>'))
    return files


def twisted_site(files: dict[str, tuple[str, bytes]]):
    """A twisted.web Site serving ``files`` (path with query -> content)."""
    from twisted.web import resource, server  # noqa: PLC0415 - reactor must be chosen first

    class Files(resource.Resource):
        isLeaf = True

        def render_GET(self, request):  # noqa: N802 - Twisted's name
            path = request.uri.decode("latin-1")
            if path not in files:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"text/plain")
                return b"not found"
            content_type, body = files[path]
            request.setHeader(b"content-type", content_type.encode())
            return body

    return server.Site(Files())


def run_demo(settings, store: Path, pages: int) -> int:
    """Crawl a ``pages``-page demo gallery into ``store`` with the project's ``settings``;
    the crawl's exit status."""
    from scrapy.crawler import CrawlerProcess  # noqa: PLC0415

    from imgcrawl import exitstatus, logfilters  # noqa: PLC0415

    if settings.getbool("IMGCRAWL_BRIEF_LOG"):
        logfilters.brief_log()
    settings.set("IMAGES_STORE", str(store.resolve()), priority="cmdline")
    # The demo site is on 127.0.0.1 on purpose: lift the SSRF guard for this crawl only.
    settings.set("IMGCRAWL_ALLOW_PRIVATE", True, priority="cmdline")
    process = CrawlerProcess(settings)  # installs the reactor named in settings
    from twisted.internet import reactor  # noqa: PLC0415

    port = reactor.listenTCP(0, twisted_site(build_gallery(pages=pages)), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/gallery/"
    print(f"imgcrawl demo: serving a {pages}-page gallery at {url}", flush=True)
    crawler = process.create_crawler("gallery")
    process.crawl(crawler, url=url)
    process.start()
    stats = crawler.stats.get_stats()
    manifest = store / "manifest.jsonl"
    stored = stats.get("imgcrawl/stored", 0)
    failed = {k.split("/", 2)[2]: v for k, v in stats.items() if k.startswith("imgcrawl/failed/")}
    thumbs = sum(1 for _ in (store / "thumbs").rglob("*.jpg")) if (store / "thumbs").exists() else 0
    elapsed = stats.get("elapsed_time_seconds", 0.0)
    print(
        f"imgcrawl demo: {stored} images stored in {store / 'full'}\n"
        f"               {thumbs} thumbnails in {store / 'thumbs'}\n"
        f"               manifest: {manifest}\n"
        f"               contact sheet: {(store / 'index.html').resolve().as_uri()} (open it in a browser)\n"
        f"               failed: {json.dumps(failed) if failed else 'none'}\n"
        f"               wall time: {elapsed:.2f} s",
        flush=True,
    )
    return exitstatus.exit_status(stats)

