from imgcrawl import extract
from imgcrawl.spiders.gallery import GallerySpider


class LightGallerySpider(GallerySpider):
    """lightGallery and PhotoSwipe galleries: each thumbnail's link names the full-size
    image in ``data-pswp-src`` / ``data-src`` (or ``href``). A hook spider: only the
    gallery's links count, not the page's other images."""

    name = "lightgallery"
    example_url = "https://www.lightgalleryjs.com/demos/responsive/"
    allowed_domains = ["www.lightgalleryjs.com"]
    start_urls = [example_url]

    def image_candidates(self, response):
        return extract.item_candidates(
            response.selector, response.url,
            "a[data-pswp-src], a[data-src], a[data-fancybox]", ("data-pswp-src", "data-src", "href"),
        )
