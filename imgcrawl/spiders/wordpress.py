from imgcrawl.spiders.gallery import GallerySpider


class WordPressGallerySpider(GallerySpider):
    """WordPress gallery blocks: each item's full-size file (``data-full-url``, else the
    largest ``srcset`` candidate), never the cropped thumbnail shown. A profile spider:
    all the rules are in ``imgcrawl/sites/wordpress.toml``."""

    name = "wordpress"
    example_url = "http://wptest.local/classic/gallery/"
    allowed_domains = ["wptest.local"]
    start_urls = [example_url]
    site_profile = "wordpress"
