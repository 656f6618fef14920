"""The "already stored" index: the SQLite one and the Redis one behave the same."""

from __future__ import annotations

import pytest

from imgcrawl.index import RedisIndex, SQLiteIndex


@pytest.fixture(params=["sqlite", "redis"])
def reopen(request, tmp_path):
    """A function that opens (again) the same index of the parametrized kind."""
    opened = []

    def open_index():
        if request.param == "sqlite":
            index = SQLiteIndex(tmp_path / "deep" / "index.sqlite")
        else:
            index = RedisIndex(request.getfixturevalue("redis_url"))
        opened.append(index)
        return index

    yield open_index
    for index in opened:
        index.close()


def test_put_get_survives_reopen_and_replaces(reopen):
    index = reopen()
    assert index.get("http://a/1.jpg") is None
    index.put("http://a/1.jpg", {"url": "http://a/1.jpg", "path": "full/x.jpg", "sha256": "00"}, stored_at=100.0)
    index.put("http://a/1.jpg", {"url": "http://a/1.jpg", "path": "full/y.jpg", "sha256": "11"}, stored_at=200.0)
    index.close()
    again = reopen()
    assert again.get("http://a/1.jpg") == ({"url": "http://a/1.jpg", "path": "full/y.jpg", "sha256": "11"}, 200.0)
    assert len(again) == 1


def test_holder_finds_the_same_bytes_under_another_url(reopen):
    index = reopen()
    index.put("http://a/1.jpg", {"url": "http://a/1.jpg", "path": "full/1.jpg", "sha256": "ab"})
    assert index.holder("ab")["path"] == "full/1.jpg"
    assert index.holder("cd") is None


def test_crawls_opening_a_fresh_index_at_once_all_get_it(tmp_path):
    """Two crawls starting into one new store: switching a new database to WAL takes a lock
    SQLite does not wait for, so the one that loses must retry, not fail the crawl."""
    import subprocess
    import sys

    script = (
        "import sys, time; from imgcrawl.index import SQLiteIndex\n"
        "start = float(sys.argv[2])\n"
        "time.sleep(max(0, start - time.time()))\n"
        "SQLiteIndex(sys.argv[1]).close()\n"
    )
    for round_ in range(15):  # the race is lost in a few percent of pairs
        path = tmp_path / f"r{round_}" / "index.sqlite"
        start = f"{__import__('time').time() + 0.3:.3f}"
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), start], stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err[-2000:]


def test_validators_round_trip_in_their_own_columns(reopen):
    index = reopen()
    record = {"url": "http://a/1.jpg", "path": "full/1.jpg", "sha256": "ab", "etag": '"v1"',
              "last_modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
    index.put("http://a/1.jpg", record, stored_at=100.0)
    index.close()
    again = reopen()
    assert again.get("http://a/1.jpg") == (record, 100.0)
    # The holder of the bytes is the record without what one URL's server said of them.
    assert again.holder("ab") == {"url": "http://a/1.jpg", "path": "full/1.jpg", "sha256": "ab"}


def test_a_name_is_claimed_once(reopen):
    index, other = reopen(), reopen()  # two crawls (workers) sharing the index
    assert index.claim("host/a", "http://a/1.jpg")
    assert index.claim("host/a", "http://a/1.jpg")  # its own: still its
    assert not other.claim("host/a", "http://a/2.jpg")
    assert other.claim("host/a~1234", "http://a/2.jpg")


def test_the_hashes_to_compare_with_are_read_from_where_each_reader_left_off(reopen):
    index, other = reopen(), reopen()
    assert other.phashes_since(0)[0] == []
    index.put("http://a/1.jpg", {"url": "http://a/1.jpg", "phash": "00000000000000ff"})
    rows, seen = other.phashes_since(0)
    assert rows == [("http://a/1.jpg", "00000000000000ff")]
    index.put("http://a/2.jpg", {"url": "http://a/2.jpg", "phash": "ff00000000000000"})
    # A near-duplicate is not compared with; an image that became one no longer is.
    index.put("http://a/3.jpg", {"url": "http://a/3.jpg", "phash": "ff00000000000001",
                                 "near_duplicate_of": "http://a/2.jpg"})
    index.put("http://a/1.jpg", {"url": "http://a/1.jpg", "phash": "00000000000000fe",
                                 "near_duplicate_of": "http://a/2.jpg"})
    changes = dict(other.phashes_since(seen)[0])
    assert changes.get("http://a/3.jpg", "") == "" and changes["http://a/1.jpg"] == ""
    assert changes["http://a/2.jpg"] == "ff00000000000000"
    assert dict(other.phashes_since(0)[0]) == {**changes, "http://a/1.jpg": ""}


# The schema of the index as the releases before validators made it.
OLD_SCHEMA = """
CREATE TABLE images (url TEXT PRIMARY KEY, record TEXT NOT NULL, stored_at REAL NOT NULL);
CREATE TABLE contents (sha256 TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


def test_an_index_made_before_validators_is_brought_up_to_date(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "index.sqlite"
    old = {"url": "http://a/1.jpg", "path": "full/1.jpg", "sha256": "ab"}
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO images VALUES (?, ?, ?)", (old["url"], json.dumps(old), 100.0))
        db.execute("INSERT INTO contents VALUES (?, ?)", ("ab", json.dumps(old)))
    db.close()
    index = SQLiteIndex(path)
    assert index.get(old["url"]) == (old, 100.0)  # no validators yet: re-crawled as before
    index.put("http://a/2.jpg", {**old, "url": "http://a/2.jpg", "etag": '"e"'}, stored_at=5.0)
    assert index.get("http://a/2.jpg")[0]["etag"] == '"e"'
    assert index.claim("n", "http://a/2.jpg")
    assert index.phashes_since(0)[0] == [(old["url"], ""), ("http://a/2.jpg", "")]
    index.close()
    again = SQLiteIndex(path)  # opened again: nothing left to add
    assert again.get("http://a/2.jpg")[0]["etag"] == '"e"'
    again.close()
    # An index this release made still reads as before for code that knows only the old columns.
    with sqlite3.connect(path) as db:
        assert json.loads(db.execute("SELECT record FROM images WHERE url = 'http://a/2.jpg'").fetchone()[0]) == {
            **old, "url": "http://a/2.jpg"}
    db.close()


def test_bytes_stay_where_they_were_first_kept(tmp_path):
    """A URL whose bytes another URL had already stored points at that file; downloaded
    again, it still does (the holder of the bytes is now its own record, naming that file)."""
    from imgcrawl.index import LocalFiles, StoredImages

    stored = StoredImages(SQLiteIndex(tmp_path / "index.sqlite"), LocalFiles(tmp_path), "sig", 1e9)

    def kept(url: str, path: str) -> dict:
        (tmp_path / path).write_bytes(b"same bytes")  # what the worker wrote for it
        record, _ = stored.keep({"url": url, "path": path, "thumbs": {}, "sha256": "ab", "thumbs_signature": "sig"})
        return record

    assert kept("http://a/1.jpg", "a.jpg")["path"] == "a.jpg"
    for _ in range(2):
        assert kept("http://d/copy.jpg", "copy.jpg")["path"] == "a.jpg"
        assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".jpg") == ["a.jpg"]
    stored.index.close()
