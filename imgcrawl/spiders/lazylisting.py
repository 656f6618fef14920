from imgcrawl import extract
from imgcrawl.spiders.gallery import GallerySpider


class LazyListingSpider(GallerySpider):
    """A photo listing with lazy thumbnails, numbered pagination (``?page=N``) and one
    detail page per photo: the generic rules page through the listing and follow each
    thumbnail to its detail page; this hook takes only the detail page's main photo
    (not the logo or the "more photos" strip)."""

    name = "lazylisting"
    example_url = "https://photos.example.org/latest/"
    allowed_domains = ["photos.example.org"]
    start_urls = [example_url]

    def image_candidates(self, response):
        return extract.item_candidates(response.selector, response.url, "figure.photo-main")
