"""The "already stored" index survives reopening and replaces records."""

from __future__ import annotations

from imgcrawl.index import SQLiteIndex


def test_put_get_survives_reopen_and_replaces(tmp_path):
    path = tmp_path / "deep" / "index.sqlite"
    index = SQLiteIndex(path)
    assert index.get("http://a/1.jpg") is None
    index.put("http://a/1.jpg", {"path": "full/x.jpg", "sha256": "00"}, stored_at=100.0)
    index.put("http://a/1.jpg", {"path": "full/y.jpg", "sha256": "11"}, stored_at=200.0)
    index.close()
    reopened = SQLiteIndex(path)
    assert reopened.get("http://a/1.jpg") == ({"path": "full/y.jpg", "sha256": "11"}, 200.0)
    assert len(reopened) == 1
