"""The SSRF guard, hostile file names and the hostile site once more, with the default
process pool (``IMGCRAWL_WORKER_POOL=process``): tests/test_security.py and
tests/test_hostile.py run them with the thread pool. Same sites, same assertions: the
tests themselves are reused, only the pool differs.
"""

from __future__ import annotations

import pytest

import test_hostile
import test_security
from conftest import run_crawl

# The hostile site's crawl-based tests, collected here again: they ask for ``crawl``, which
# in this module is the process-pool crawl below.
from test_hostile import (  # noqa: F401 - collected by pytest
    test_a_failing_page_is_one_warning_too,
    test_crawl_finishes_without_errors_or_tracebacks,
    test_each_bad_image_fails_once_with_its_reason,
    test_exif_orientation_2_to_8,
    test_format_comes_from_the_bytes,
    test_good_and_odd_images_are_kept_byte_exact,
    test_oversized_stream_is_cut_while_streaming,
    test_retries_are_bounded_and_honour_retry_after,
    test_svg_is_kept_without_a_raster_thumbnail,
    test_thumbnails_of_unusual_modes_look_right,
)

POOL = "process"


def run_crawl_in_pool(*args, settings=None, **kwargs):
    """``run_crawl`` with the process pool, whatever pool the test asked for."""
    return run_crawl(*args, settings={**(settings or {}), "IMGCRAWL_WORKER_POOL": POOL}, **kwargs)


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """test_hostile's crawl, with the process pool."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_hostile, "run_crawl", run_crawl_in_pool)
        return test_hostile.crawl.__wrapped__(tmp_path_factory)


@pytest.fixture
def process_pool(monkeypatch):
    monkeypatch.setattr(test_security, "run_crawl", run_crawl_in_pool)


def test_guard_checks_every_image_and_every_redirect_hop(process_pool, tmp_path):
    test_security.test_guard_checks_every_image_and_every_redirect_hop(tmp_path)


def test_hostile_names_never_escape_the_store(process_pool, tmp_path):
    test_security.test_hostile_names_never_escape_the_store(tmp_path)
