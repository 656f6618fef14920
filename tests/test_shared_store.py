"""Two crawls into one store at the same time: each finishes cleanly, the manifest has every
line of both (their merges wait for each other), and the contact sheet is whole and shows
both (each crawl writes it after its merge, under the same lock)."""

from __future__ import annotations

import json
import random
import subprocess
import threading

from conftest import CRAWL_TIMEOUT, LocalSite, answer, crawl_command
from imgcrawl.demo import make_image

PER_CRAWL = 6
# Long alt texts make each sheet a few MB, so the two crawls' sheet writes overlap in time.
ALT = "x" * 5_000_000


def two_galleries() -> LocalSite:
    """/a/ and /b/, PER_CRAWL images each; each gallery's last image is answered only once
    both crawls have asked for theirs, so the two crawls end (and write the sheet) together."""
    rng = random.Random(3)
    files, images = {}, {}
    for crawl in "ab":
        imgs = "".join(f'<img src="/img/{crawl}{i}.jpg" alt="{crawl}{i} {ALT}">' for i in range(PER_CRAWL))
        files[f"/{crawl}/"] = ("text/html", f"<html><body>{imgs}</body></html>".encode())
        for i in range(PER_CRAWL):
            images[f"/img/{crawl}{i}.jpg"] = make_image(rng, "jpg", f"{crawl}{i}")
    files.update({path: ("image/jpeg", body) for path, body in images.items()})
    together = threading.Barrier(2, timeout=60)

    def last(h):
        together.wait()
        answer(h, "image/jpeg", images[h.path])

    site = LocalSite(files)
    site.handlers.update({f"/img/{crawl}{PER_CRAWL - 1}.jpg": last for crawl in "ab"})
    return site.start()


def test_two_crawls_into_one_store_at_once(tmp_path):
    site = two_galleries()
    store = tmp_path / "store"
    try:
        procs = []
        for crawl in "ab":
            cmd, env = crawl_command(store, "-a", f"url={site.url(f'/{crawl}/')}")
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        logs = [proc.communicate(timeout=CRAWL_TIMEOUT)[0] for proc in procs]
    finally:
        site.stop()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
        assert " ERROR: " not in log and "Traceback" not in log, log[-3000:]
        assert "'finish_reason': 'finished'" in log
    # Every image of both crawls is in the one manifest, each line whole, each gallery's
    # images together and in their order.
    lines = [json.loads(line) for line in (store / "manifest.jsonl").read_text().splitlines()]
    alts = [line["alt"][:2] for line in lines]
    assert alts in ([f"{c}{i}" for c in "ab" for i in range(PER_CRAWL)],
                    [f"{c}{i}" for c in "ba" for i in range(PER_CRAWL)]), alts
    assert all(line["status"] == "downloaded" for line in lines)
    assert len(list((store / "crawls").glob("manifest-*.jsonl"))) == 2
    # The sheet is whole (the end of the page is there) and shows both crawls' images.
    sheet = (store / "index.html").read_text(encoding="utf-8")
    assert sheet.rstrip().endswith("</html>")
    data = sheet.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert [record["a"][:2] for record in json.loads(data)] == alts
    assert f"{2 * PER_CRAWL} images" in sheet
    assert [p.name for p in store.iterdir() if p.name.startswith(".") and p.name != ".imgcrawl"] == []
