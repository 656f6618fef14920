"""Scrapy fetching every image URL of a benchmark run and storing nothing: the ``fetch-only``
contender of ``benchmarks/run.py``. Run in the project (imgcrawl's settings apply) it shows
what Scrapy's request cycle alone costs per image, as imgcrawl configures it.

``scrapy runspider benchmarks/fetch_spider.py -a urls=URLS_FILE``
"""

import scrapy


class FetchOnlySpider(scrapy.Spider):
    name = "fetch_only"

    def __init__(self, urls: str, **kwargs):
        super().__init__(**kwargs)
        self.urls_file = urls

    async def start(self):
        with open(self.urls_file) as urls:
            for url in urls.read().split():
                yield scrapy.Request(url, dont_filter=True)

    def parse(self, response):
        return None  # the body is dropped: nothing is decoded, hashed or written
