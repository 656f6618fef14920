"""Stock Scrapy 2.19: its ImagesPipeline with IMAGES_THUMBS, crawling the benchmark gallery.

``scrapy runspider benchmarks/stock_spider.py -a url=http://127.0.0.1:PORT/gallery/
-s IMAGES_STORE=DIR`` (outside a Scrapy project, so Scrapy's own defaults apply).
"""

import scrapy


class StockGallerySpider(scrapy.Spider):
    name = "stock_gallery"
    custom_settings = {
        "ITEM_PIPELINES": {"scrapy.pipelines.images.ImagesPipeline": 1},
        "IMAGES_THUMBS": {"small": (256, 256)},
        "LOG_LEVEL": "INFO",  # the default DEBUG line per item would only add cost
    }

    def __init__(self, url: str, **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [url]

    def parse(self, response):
        yield {"image_urls": [response.urljoin(u) for u in response.css("img::attr(src)").getall()]}
        yield from response.follow_all(css="a.page")
