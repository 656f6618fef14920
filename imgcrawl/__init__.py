"""imgcrawl: a fast, correct Scrapy image-gallery crawler."""

__version__ = "0.1.0"
