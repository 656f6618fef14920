"""imgcrawl's tuned defaults. Each has a one-line reason; override any with ``-s NAME=VALUE``."""

BOT_NAME = "imgcrawl"
SPIDER_MODULES = ["imgcrawl.spiders"]
NEWSPIDER_MODULE = "imgcrawl.spiders"
# `scrapy crawl` exits non-zero when a crawl did not do its job (imgcrawl/exitstatus.py).
COMMANDS_MODULE = "imgcrawl.commands"

# Honest: names the tool, so sites can identify and throttle us. Add a contact URL for your
# crawl with -s USER_AGENT="imgcrawl/0.1 (+https://you.example/bot)".
USER_AGENT = "imgcrawl/0.1 (Scrapy image-gallery crawler)"
# Polite by default: robots.txt is honoured (images included).
ROBOTSTXT_OBEY = True

# Static crawls run on epoll (the reactor the benchmarks measure, docs/performance.md);
# render=browser switches a crawl to asyncio, which scrapy-playwright needs (docs/render.md).
TWISTED_REACTOR = "twisted.internet.epollreactor.EPollReactor"
# Scrapy's downloader with that leak closed, for crawls that run on the asyncio reactor
# (-a render=browser, see imgcrawl/render.py): the per-host limit holds on both reactors.
DOWNLOADER = "imgcrawl.compat.Downloader"

# Per-host concurrency is also the keep-alive pool size (maxPersistentPerHost), so every
# slot of concurrency reuses one kept connection instead of opening and closing extras.
CONCURRENT_REQUESTS_PER_DOMAIN = 16
# Room for a page host and image CDN hosts at full speed at once, and above the pipeline's
# image bound (IMGCRAWL_MAX_INFLIGHT, at most three quarters of this): while the downloader holds
# CONCURRENT_REQUESTS requests the engine fetches no page, so images in flight filling it
# would starve pagination.
CONCURRENT_REQUESTS = 128
# Requests go out when they are made, not at the reactor's next poll (imgcrawl/handlers.py).
DOWNLOAD_HANDLERS = {
    "http": "imgcrawl.handlers.HTTPDownloadHandler",
    "https": "imgcrawl.handlers.HTTPDownloadHandler",
}
# Image downloads are short; 180 s (the default) ties up a slot for 3 minutes per stall.
DOWNLOAD_TIMEOUT = 30
# Two retries absorb blips without hammering a failing server.
RETRY_TIMES = 2
# The final failure is reported once by the pipeline (images) or HttpError (pages).
RETRY_GIVE_UP_LOG_LEVEL = "DEBUG"
# Wait before retrying: Retry-After if the server says (up to IMGCRAWL_RETRY_AFTER_MAX s),
# else IMGCRAWL_RETRY_BACKOFF s doubled per attempt.
IMGCRAWL_RETRY_BACKOFF = 1.0
IMGCRAWL_RETRY_AFTER_MAX = 60.0
# Redirect chains (and loops) stop after this many hops; CDNs need 1-3.
REDIRECT_MAX_TIMES = 5
DOWNLOADER_MIDDLEWARES = {
    # First, so no other middleware works on a request that is refused. Every request passes
    # it wherever it sits: pages, images, robots.txt, each redirect hop and each retry.
    "imgcrawl.guard.PrivateAddressGuard": 60,
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "imgcrawl.retry.BackoffRetryMiddleware": 550,
    # Scrapy's decompression, but a body over DOWNLOAD_MAXSIZE once decompressed fails in one
    # line (too-large), and a compressed image waits for IMGCRAWL_MAX_INFLIGHT_BYTES.
    "scrapy.downloadermiddlewares.httpcompression.HttpCompressionMiddleware": None,
    "imgcrawl.inflight.HttpCompressionMiddleware": 590,
}
# SSRF guard: names that do not resolve and loopback, private, link-local and metadata
# addresses are refused; so is every connection to such an address. The demo and
# the tests crawl 127.0.0.1 on purpose and set this to True.
IMGCRAWL_ALLOW_PRIVATE = False
# A proxy (http_proxy/https_proxy, or meta["proxy"]) looks names up and connects where the
# guard cannot check, so with the guard on, requests it would carry are refused unless this
# is True; the guard then still refuses targets that do not resolve to a public address.
IMGCRAWL_ALLOW_PROXY = False
# Quotas (0 = none): stop and close the crawl once this many images / bytes are stored.
IMGCRAWL_MAX_IMAGES = 0
IMGCRAWL_MAX_BYTES = 0
# Bounded downloads: a photo over 64 MiB is refused while streaming, not after, and so is a
# compressed body (page or image) that decompresses past it.
DOWNLOAD_MAXSIZE = 64 * 1024 * 1024
DOWNLOAD_WARNSIZE = 16 * 1024 * 1024
# A response whose status line and headers run past this is refused (too-large): Twisted
# bounds each header line but not their number, so endless headers grew until the timeout.
IMGCRAWL_MAX_HEADER_BYTES = 64 * 1024
# Image bodies in memory (downloaded, decompressed, queued for the workers) in bytes: while
# they fill this, no image download starts and no compressed one is decompressed. The image
# count bound alone let large or decompressed bodies add up to gigabytes.
IMGCRAWL_MAX_INFLIGHT_BYTES = 32 * 1024 * 1024
# -a render=browser (imgcrawl/render.py, imgcrawl/browser.py): pages rendered in headless
# Chromium. The browser (Debian's chromium; Playwright's own download is never used):
IMGCRAWL_BROWSER = "/usr/bin/chromium"
# Pages rendered at once: each is a renderer process of 50-200 MB.
IMGCRAWL_RENDER_PAGES = 2
# Seconds a page may take to load before it fails (as a page that timed out).
IMGCRAWL_RENDER_TIMEOUT = 30
# Scrolling and "Load more" clicks per page stop after a round that adds no image, or after
# this many seconds or rounds, whichever comes first.
IMGCRAWL_RENDER_SCROLL_TIME = 20
IMGCRAWL_RENDER_SCROLLS = 50
# Each renderer's JavaScript heap, in MB: a runaway page fails instead of eating the machine.
IMGCRAWL_RENDER_MEMORY_MB = 512
# Resource types the browser does not fetch: the DOM keeps their URLs, and image files are
# downloaded once, by Scrapy (keep-alive pool, byte-exact, the guard, robots.txt).
IMGCRAWL_RENDER_BLOCK = ["image", "media", "font"]
# One DNS lookup per host, not per request.
DNSCACHE_ENABLED = True
DNSCACHE_SIZE = 10_000
# CDNs redirect image URLs (http->https, signed URLs); without this a redirect is a failure.
MEDIA_ALLOW_REDIRECTS = True
# Pages whose items wait for the pipeline's in-flight bound stay in the scraper; Scrapy's 5 MB
# default lets hundreds of gallery pages' items wait at once, so memory grows with the
# gallery. A few small pages' items (over a second of work) keep the pipeline fed, and
# peak memory then stays flat however long the gallery.
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 25_000
# Items of one page processed at once: the in-flight bound (IMGCRAWL_MAX_INFLIGHT) admits no
# more, and each unused slot is a Twisted cooperative task made for every page.
CONCURRENT_ITEMS = 64
# Crawl breadth-first so pagination fans out and the image queue fills early.
DEPTH_PRIORITY = 1
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"
# How many gallery/album/detail links deep to follow from a listing. Pagination does not
# count: a 500-page gallery is ~100 "next" hops deep, and Scrapy's DEPTH_LIMIT (which counts
# every hop; 0 = off, still usable) would cut it off silently.
IMGCRAWL_DETAIL_DEPTH = 3
# No surprise network exposure: no telnet console, no remote-control HTTP endpoint.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
# Scrapy's default logs every item at DEBUG; INFO keeps a 20,000-image crawl readable.
LOG_LEVEL = "INFO"
# ... and below DEBUG the two per-response/per-item lines are not even built.
LOG_FORMATTER = "imgcrawl.logformatter.QuietLogFormatter"
# The manifest keeps alt texts and URLs readable (JSON's default escapes non-ASCII).
FEED_EXPORT_ENCODING = "utf-8"

# -s IMGCRAWL_REDIS_URL=redis://host:6379/0 turns on the shared Redis frontier (see distributed.py).
ADDONS = {"imgcrawl.distributed.RedisAddon": 0}

ITEM_PIPELINES = {"imgcrawl.pipelines.GalleryImagesPipeline": 1}
# Where originals, thumbnails, the index and the manifest go: a directory, or a bucket
# (-s IMAGES_STORE=s3://BUCKET/PREFIX/ with Scrapy's AWS_* settings; see docs/s3.md).
IMAGES_STORE = "images"
# Images smaller than this (as displayed, after EXIF rotation) are not stored: reason too-small.
IMAGES_MIN_WIDTH = 0
IMAGES_MIN_HEIGHT = 0
# One small thumbnail by default; JSON strings work too: -s IMAGES_THUMBS='{"small": [256, 256]}'
IMAGES_THUMBS = {"small": (256, 256)}
# Re-download an image only after 90 days (Scrapy's default) or when it is missing. Once due,
# an image whose server sent an ETag or Last-Modified is asked for only if it changed (a 304
# costs no body); IMAGES_EXPIRES=0 makes every stored image due now.
IMAGES_EXPIRES = 90
# Originals are full/<sha1 of url>.<ext>; a template names them instead, e.g.
# -s IMGCRAWL_FILE_NAME='{host}/{page_title}/{index:03}-{name}.{ext}' (fields: docs/recrawl.md).
IMGCRAWL_FILE_NAME = ""
# Perceptual hashes this many bits apart (of 64) or fewer mark a near-duplicate
# (near_duplicate_of); chosen from measured variants vs distinct photos (docs/recrawl.md).
# -1 looks for none.
IMGCRAWL_NEAR_DUPLICATE_DISTANCE = 10
# A near-duplicate is stored like any image unless this is True: then it is not stored, and
# its manifest line (status "skipped") names the earlier image's files.
IMGCRAWL_SKIP_NEAR_DUPLICATES = False
# The manifest next to the images: one JSON line per image URL, its latest state, in page
# order. Each crawl writes its lines to a journal of its own (crawls/pending/) as images are
# stored and merges it into manifest.jsonl when it ends (docs/manifest.md).
FEEDS = {
    "%(images_store)s/manifest.jsonl": {"format": "jsonlines", "overwrite": False, "imgcrawl_per_image": True},
}
FEED_URI_PARAMS = "imgcrawl.manifest.manifest_uri_params"
# Local manifests are written a whole line at a time as each image is stored; a full disk
# or a read-only file is one line and the crawl's close reason, not a traceback per item.
# A manifest in a bucket is merged as on disk (read, merged, written back if no other crawl
# wrote it meanwhile), with the same AWS_* settings as the images; Scrapy's would replace it.
FEED_STORAGES = {
    "": "imgcrawl.manifest.ManifestFileStorage", "file": "imgcrawl.manifest.ManifestFileStorage",
    "s3": "imgcrawl.s3.S3FeedStorage",
}
# No images, no manifest: an empty file says nothing, and a store we cannot write to would
# add the feed exporter's traceback to the pipeline's one-line explanation.
FEED_STORE_EMPTY = False
# The manifest's columns (CSV via -o images.csv gets the same ones).
FEED_EXPORT_FIELDS = [
    "url", "page_url", "position", "alt", "title", "status", "reason", "path", "sha256",
    "format", "width", "height", "bytes", "thumbs", "phash", "near_duplicate_of",
]
# CSV's thumbs column as JSON ({"small": "thumbs/small/….jpg"}), not a Python repr.
FEED_EXPORTERS = {"csv": "imgcrawl.manifest.ManifestCsvItemExporter"}

# A progress line every IMGCRAWL_PROGRESS_INTERVAL seconds, a summary and a contact sheet at
# the end. Scrapy's LogStats line ("Crawled N pages ... items/min") would only repeat it.
EXTENSIONS = {
    "scrapy.extensions.logstats.LogStats": None,
    "imgcrawl.extensions.Progress": 500,
    "imgcrawl.extensions.ContactSheet": 510,
    # A killed crawl's half-written manifest line is cut before the manifest is appended to.
    "imgcrawl.manifest.RepairManifest": 0,
    # One line per failure instead of Scrapy's duplicate warning or traceback.
    "imgcrawl.logfilters.OneLineLogs": 0,
    # Full GC passes skip what startup loaded: shorter reactor stalls during the crawl.
    "imgcrawl.tuning.FreezeStartupObjects": 0,
}
# Scrapy's stats without their per-attribute deprecation shim, a cost paid on every request.
STATS_CLASS = "imgcrawl.compat.StatsCollector"
IMGCRAWL_PROGRESS_INTERVAL = 10
# On a terminal (stderr a TTY) one live display replaces the progress lines; False keeps them.
IMGCRAWL_LIVE_PROGRESS = True
# A request in flight this many seconds is named in the progress display and line: a
# stalled download otherwise shows only as a rate of 0.
IMGCRAWL_STALLED_AFTER = 5
# Scrapy's version table, component lists, overridden settings and stats dump at DEBUG, so
# the start is a few lines and the summary is the last; False logs them at INFO as Scrapy does.
IMGCRAWL_BRIEF_LOG = True
