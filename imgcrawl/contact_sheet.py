"""The contact sheet: one self-contained ``index.html`` in the image store.

Pure (standard library only). The records are embedded as JSON and a few lines of inline
script show one page of thumbnails at a time, so 20,000 images never become 20,000
``<img>`` elements; thumbnails are lazy-loaded and every link is relative to the store,
so the file opens from disk with no server and no network.

The sheet opens from ``file://``, so anything it navigates to runs with the store's files
within reach. Only stored originals in passive raster formats are links; an SVG (which
may carry script) is shown only through ``<img>`` (where browsers run no script and load
nothing) — in its tile and, when clicked, in the sheet's own viewer — never opened as a
document. The failure list links only http(s) URLs.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from pathlib import Path

PAGE_SIZE = 120  # thumbnails per screen: enough to scan, few enough to stay light
MAX_FAILURES_LISTED = 500  # the rest are in the manifest (status "failed")


def record_for(item: dict) -> dict:
    """The compact per-image record the sheet needs, from a manifest line / item."""
    thumbs = item.get("thumbs") or {}
    return {
        "u": item.get("url"),
        "g": item.get("page_url") or "",
        "o": item.get("position"),
        "a": item.get("alt") or item.get("title") or "",
        "s": item.get("status"),
        "r": item.get("reason"),
        "p": item.get("path"),
        # The smallest thumbnail would be ideal, but names carry no size: take the first.
        "t": next(iter(thumbs.values()), None),
        "w": item.get("width"),
        "h": item.get("height"),
        "f": item.get("format"),
        "b": item.get("bytes"),
        "n": item.get("near_duplicate_of"),  # marked on its tile
    }


def _script_json(value) -> str:
    # "<" escaped so no string in the data can close the <script> element.
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def _link(url: str) -> str:
    """A link for an http(s) URL; any other (``javascript:``, ``file:``) as plain text."""
    text = html.escape(url)
    return f'<a href="{text}">{text}</a>' if url.lower().startswith(("http://", "https://")) else text


def _failures_block(listed: list[dict], failed: int) -> str:
    if not failed:
        return ""
    items = "".join(
        f'<li>{_link(r["u"] or "")} <b>{html.escape(r["r"] or "failed")}</b>'
        + (f" on {_link(r['g'])}" if r["g"] else "")
        + "</li>"
        for r in listed
    )
    if failed > len(listed):
        items += f"<li>… and {failed - len(listed)} more: see the manifest (status failed)</li>"
    return f'<details id="failures"><summary>{failed} failed</summary><ul>{items}</ul></details>'


def write(records: Iterable[dict], path: str | os.PathLike, title: str, scope: str = "") -> Path:
    """Write the sheet atomically (a reader never sees half a sheet). ``records`` is read
    twice (counts and failures first, then the images streamed out one by one), so memory
    stays flat however long the crawl; the page groups are formed in the browser.
    ``scope`` says what the sheet covers (all crawls, or this one), next to the count."""
    path = Path(path)
    if iter(records) is records:  # a one-shot iterator cannot be read twice: hold it
        records = list(records)
    stored = failed = near = 0
    listed: list[dict] = []
    for record in records:
        if record["s"] != "failed":
            stored += 1
            near += bool(record.get("n"))
            continue
        failed += 1
        if len(listed) < MAX_FAILURES_LISTED:
            listed.append(record)
    head, tail = TEMPLATE.split("{{data}}")
    head = (
        head.replace("{{title}}", html.escape(title))
        .replace("{{count}}", f"{stored} images" + (f", {near} near-duplicates (marked \u2248)" if near else ""))
        .replace("{{scope}}", html.escape(scope))
        .replace("{{failures}}", _failures_block(listed, failed))
    )
    # A temp name of its own (as imaging.atomic_write's), created exclusively: two crawls
    # into one store would otherwise write into the same temp file, and the sheet that got
    # renamed into place would hold parts of both while the other rename failed.
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as out:
            out.write(head + "[")
            separator = ""
            for record in records:
                if record["s"] != "failed":
                    out.write(separator + _script_json(record))
                    separator = ","
            out.write("]" + tail.replace("{{page_size}}", str(PAGE_SIZE)))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no half-written file behind
        raise
    return path


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#222;color:#eee;padding:8px 16px;display:flex;gap:16px;align-items:center;flex-wrap:wrap;z-index:1}
header h1{font-size:16px;margin:0}
#scope{color:#aaa}
header button{font:inherit;padding:2px 10px}
main{padding:8px 16px}
h2{font-size:13px;font-weight:normal;margin:16px 0 6px;color:#555;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}
.grid a{position:relative;display:flex;align-items:center;justify-content:center;height:180px;background:#fff;border:1px solid #ddd;overflow:hidden}
.grid img{max-width:100%;max-height:100%}
.grid span{position:absolute;left:0;right:0;bottom:0;background:rgba(0,0,0,.7);color:#fff;font-size:12px;padding:2px 4px;display:none}
.grid a:hover span,.grid a:focus span{display:block}
.grid a:not([href]){cursor:zoom-in}
.grid a.near{outline:3px dashed #d60;outline-offset:-3px}
.grid a.near::before{content:"\\2248";position:absolute;top:2px;left:4px;color:#d60;font-size:20px;font-weight:bold}
#viewer{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;flex-direction:column;align-items:center;justify-content:center;z-index:2;cursor:zoom-out}
#viewer[hidden]{display:none}
#viewer img{max-width:95vw;max-height:88vh;background:#fff}
#viewer p{color:#eee;margin:8px;word-break:break-all}
#failures{margin:8px 16px}
#failures li{word-break:break-all}
</style></head>
<body>
<header><h1>{{title}}</h1><span id="count">{{count}}</span><span id="scope">{{scope}}</span>
<nav><button id="prev">&larr; prev</button> <span id="where"></span> <button id="next">next &rarr;</button></nav></header>
{{failures}}
<main id="sheet"></main>
<div id="viewer" hidden><img alt=""><p></p></div>
<script id="data" type="application/json">{{data}}</script>
<script>
"use strict";
// Stored images grouped by the page they were found on, pages in crawl order. A merged
// manifest is in that order already; one crawl's records come in the order downloads
// finished: each page's images are put back in their order on it.
const groups = new Map();
for (const im of JSON.parse(document.getElementById("data").textContent)) {
  const group = groups.get(im.g);
  group ? group.push(im) : groups.set(im.g, [im]);
}
const position = (im) => im.o ?? Infinity;  // a record without one stays after those with one
for (const group of groups.values()) group.sort((a, b) => position(a) - position(b) || 0);
const images = Array.from(groups.values()).flat();
const pageSize = {{page_size}};
const pages = Math.max(1, Math.ceil(images.length / pageSize));
const sheet = document.getElementById("sheet");
// Originals a browser shows as a picture and nothing more. Anything else (SVG: it may carry
// script, which would run with file:// access if the file were opened as a page) is never
// linked; clicking its tile shows it in the viewer below, through <img>, where scripts do
// not run.
const passive = /\\.(jpe?g|png|gif|webp|bmp|ico|avif|tiff?|heic|jp2)$/i;
const viewer = document.getElementById("viewer");
function view(im) {
  viewer.querySelector("img").src = im.p;
  viewer.querySelector("img").alt = im.a || "";
  viewer.querySelector("p").textContent = im.u;
  viewer.hidden = false;
}
viewer.onclick = () => { viewer.hidden = true; viewer.querySelector("img").removeAttribute("src"); };
function kb(n) { return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.ceil(n / 1024) + " KB"; }
function current() {
  const m = /page=(\\d+)/.exec(location.hash);
  return Math.min(pages, Math.max(1, m ? +m[1] : 1));
}
function show() {
  const page = current(), first = (page - 1) * pageSize;
  sheet.textContent = "";
  let grid = null, group = null;
  for (const im of images.slice(first, first + pageSize)) {
    if (im.g !== group || !grid) {
      group = im.g;
      const h = document.createElement("h2");
      h.textContent = group || "(no page)";
      grid = document.createElement("div");
      grid.className = "grid";
      sheet.append(h, grid);
    }
    const a = document.createElement("a");
    if (im.f !== "SVG" && passive.test(im.p || "")) {
      a.href = im.p;
    } else {
      a.tabIndex = 0;
      a.setAttribute("role", "button");
      a.onclick = () => view(im);
      a.onkeydown = (e) => { if (e.key === "Enter") view(im); };
    }
    const info = (im.w ? im.w + "\\u00d7" + im.h + " " : "") + (im.f || "") + (im.b ? ", " + kb(im.b) : "");
    a.title = info + (im.a ? "\\n" + im.a : "") + "\\n" + im.u + (im.n ? "\\nnear-duplicate of " + im.n : "");
    if (im.n) a.classList.add("near");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = im.a || "";
    img.src = im.t || im.p;
    const span = document.createElement("span");
    span.textContent = info;
    a.append(img, span);
    grid.append(a);
  }
  document.getElementById("where").textContent = "page " + page + " of " + pages;
  document.getElementById("prev").disabled = page <= 1;
  document.getElementById("next").disabled = page >= pages;
  window.scrollTo(0, 0);
}
function go(delta) { location.hash = "page=" + (current() + delta); }
document.getElementById("prev").onclick = () => go(-1);
document.getElementById("next").onclick = () => go(1);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !viewer.hidden) viewer.onclick();
  if (e.key === "ArrowLeft" && current() > 1) go(-1);
  if (e.key === "ArrowRight" && current() < pages) go(1);
});
window.addEventListener("hashchange", show);
show();
</script>
</body></html>
"""
