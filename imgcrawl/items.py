"""One item per image, so the manifest has one flat line per image."""

from __future__ import annotations

import scrapy


class GalleryItem(scrapy.Item):
    # Set by the spider.
    image_urls = scrapy.Field()  # [url]: the one full-size URL the pipeline fetches
    page_url = scrapy.Field()  # the page the image was found on
    position = scrapy.Field()  # its place among the page's images (0 first), as found there
    alt = scrapy.Field()
    title = scrapy.Field()
    page_title = scrapy.Field()  # the page's <title> (for IMGCRAWL_FILE_NAME)
    # Set by the pipeline (see pipelines.RESULT_FIELDS).
    images = scrapy.Field()  # Scrapy's result list: one dict per URL
    url = scrapy.Field()
    status = scrapy.Field()  # downloaded | uptodate | cached | skipped | failed
    reason = scrapy.Field()  # why it failed (http-404, not-an-image, timeout) or was skipped (near-duplicate)
    path = scrapy.Field()  # the original, relative to IMAGES_STORE
    sha256 = scrapy.Field()  # of the original bytes as the server sent them
    format = scrapy.Field()
    width = scrapy.Field()
    height = scrapy.Field()
    bytes = scrapy.Field()
    thumbs = scrapy.Field()  # {name: path}
    phash = scrapy.Field()  # 64-bit perceptual hash, hex
    near_duplicate_of = scrapy.Field()  # the URL of the earlier image this one resembles
