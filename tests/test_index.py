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
