"""``IMAGES_STORE=s3://BUCKET/PREFIX/``: the store as objects in an S3-compatible bucket.

* :func:`config_from_settings` reads Scrapy's own settings (``AWS_*``,
  ``IMAGES_STORE_S3_ACL``); anything botocore does not get (keys, region, endpoint) it finds
  the usual AWS way (environment variables, ``~/.aws``, instance roles).
* :class:`S3Objects` is the bucket as the rest of imgcrawl uses a store: the image workers
  write and read objects through it, and the index thread asks it what is there (HEAD) and
  removes duplicates. It pickles (a worker gets it with each job) and makes its botocore
  client once per process.
* :class:`S3FeedStorage` (``FEED_STORAGES["s3"]``) writes a manifest into the bucket; S3
  cannot append, so an appending feed is read, extended and written back conditionally.
* Failures of the store itself (bad credentials, a missing bucket, an endpoint that does not
  answer) become one :class:`StoreError` with the fix, whichever process met them.

Standard library only at import time (the workers import this module and stay Scrapy-free);
botocore is imported when the first client is made.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from imgcrawl.failures import Failed

logger = logging.getLogger(__name__)

# The longest key S3 takes, in UTF-8 bytes.
KEY_MAX = 1024
# Attempts per request (botocore's "standard" retry mode: 5xx, throttling, dropped
# connections), with its capped exponential backoff between them.
MAX_ATTEMPTS = 5
# An endpoint that accepts no connection is reported after this, not botocore's 60 s.
CONNECT_TIMEOUT = 10
# Requests to a bucket at once from one process, unless AWS_MAX_POOL_CONNECTIONS says (botocore's
# own default pool size).
DEFAULT_CONNECTIONS = 10
# Scrapy's IMAGES_STORE_S3_ACL default. Objects are private anyway, and buckets made since
# 2023 refuse any ACL but the owner's, so this one is not sent.
DEFAULT_ACL = "private"
# How often an appending feed is read and written back when other crawls write in between.
APPEND_ATTEMPTS = 10

MEDIA_TYPES = {
    "JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
    "BMP": "image/bmp", "TIFF": "image/tiff", "ICO": "image/vnd.microsoft.icon",
    "AVIF": "image/avif", "HEIF": "image/heic", "JPEG2000": "image/jp2", "SVG": "image/svg+xml",
}
FEED_MEDIA_TYPES = {
    "jsonlines": "application/jsonl", "jl": "application/jsonl", "json": "application/json",
    "csv": "text/csv; charset=utf-8", "xml": "application/xml",
}
HTML = "text/html; charset=utf-8"

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,254}")
_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on"}


def is_s3(uri) -> bool:
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)``; the prefix is empty or ends in one ``/``."""
    bucket, _, prefix = str(uri).removeprefix("s3://").partition("/")
    example = "e.g. -s IMAGES_STORE=s3://my-bucket/images/"
    if "@" in bucket or ":" in bucket:
        raise ValueError(f"IMAGES_STORE={uri!r}: no credentials or port in the URI; set AWS_ACCESS_KEY_ID, "
                         f"AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL instead ({example})")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"IMAGES_STORE={uri!r}: {bucket!r} is not a bucket name; {example}")
    prefix = re.sub(r"/{2,}", "/", prefix).strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def parse_verify(value) -> bool | str:
    """``AWS_VERIFY`` as botocore takes it: a bool, or the path of a CA bundle. ``-s`` gives a
    string, and botocore would take "False" for a file name."""
    if value is None or isinstance(value, bool):
        return True if value is None else value
    text = str(value).strip()
    if text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE or not text:
        return True
    if not Path(text).is_file():
        raise ValueError(f"AWS_VERIFY={text!r} is neither True/False nor a CA bundle file; "
                         "e.g. -s AWS_VERIFY=/etc/ssl/certs/ca-certificates.crt")
    return text


@dataclass(frozen=True)
class S3Config:
    """Where the store is and how to reach it: everything a worker needs to make a client."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region_name: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    use_ssl: bool = True
    verify: bool | str = True
    acl: str | None = None
    max_pool_connections: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, relative: str) -> str:
        """The object key for a store-relative path, refusing what would not stay under the
        prefix when the bucket is served over HTTP (``..``, empty parts) or is no key."""
        if "\x00" in relative:
            raise Failed("bad-path", f"NUL in path {relative!r}")
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise Failed("bad-path", f"{relative[:80]!r} is outside the image store")
        key = self.prefix + relative
        if len(key.encode()) > KEY_MAX:
            raise Failed("bad-path", f"{relative[:80]!r}... makes a key over {KEY_MAX} bytes")
        return key

    def cache_name(self) -> str:
        """A directory name of its own for this store (endpoint, bucket and prefix)."""
        where = f"{self.endpoint_url or ''}|{self.bucket}|{self.prefix}"
        return f"s3-{self.bucket}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def config_from_settings(uri: str, settings, acl_setting: str = "IMAGES_STORE_S3_ACL") -> S3Config:
    """The store's configuration from Scrapy's settings; ValueError says what is wrong.
    ``acl_setting``: IMAGES_STORE_S3_ACL for the images, FEED_STORAGE_S3_ACL for feeds."""
    bucket, prefix = parse_s3_uri(uri)
    endpoint = settings.get("AWS_ENDPOINT_URL") or None
    if endpoint and not re.match(r"https?://[^/]", endpoint):
        raise ValueError(f"AWS_ENDPOINT_URL={endpoint!r} is not an http(s) URL; e.g. -s AWS_ENDPOINT_URL=https://s3.example.com")
    acl = settings.get(acl_setting) or None
    pool = settings.get("AWS_MAX_POOL_CONNECTIONS")
    return S3Config(
        bucket=bucket, prefix=prefix, endpoint_url=endpoint,
        region_name=settings.get("AWS_REGION_NAME") or None,
        access_key=settings.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=settings.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=settings.get("AWS_SESSION_TOKEN") or None,
        use_ssl=settings.getbool("AWS_USE_SSL", True) if settings.get("AWS_USE_SSL") is not None else True,
        verify=parse_verify(settings.get("AWS_VERIFY")),
        acl=None if acl == DEFAULT_ACL else acl,
        max_pool_connections=int(pool) if pool else None,
    )


@functools.lru_cache(maxsize=8)
def client(config: S3Config, attempts: int = MAX_ATTEMPTS):
    """A botocore S3 client, one per process and configuration (botocore's clients are
    thread-safe). Raises ImportError without botocore, ValueError for a bad endpoint."""
    import botocore.session  # noqa: PLC0415 - the `s3` extra, imported only when used
    from botocore.config import Config  # noqa: PLC0415

    # Each client made says at INFO where botocore found the keys and the endpoint: not news
    # to whoever set them, and said again by every client of the crawl.
    for name in ("botocore.credentials", "botocore.configprovider"):
        logging.getLogger(name).setLevel(logging.WARNING)
    options = {"max_pool_connections": config.max_pool_connections} if config.max_pool_connections else {}
    return botocore.session.get_session().create_client(
        "s3",
        aws_access_key_id=config.access_key, aws_secret_access_key=config.secret_key,
        aws_session_token=config.session_token, endpoint_url=config.endpoint_url,
        region_name=config.region_name, use_ssl=config.use_ssl, verify=config.verify,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts},
                      connect_timeout=CONNECT_TIMEOUT, **options),
    )


# -- failures of the store ---------------------------------------------------------------

class StoreError(Failed):
    """A failure of the bucket itself (not of one image): ``reason`` is a store failure
    (:data:`imgcrawl.failures.STORE_FAILURES`), ``message`` the one line with the fix."""

    def __init__(self, reason: str, detail: str, message: str):
        super().__init__(reason, detail)
        self.message = message

    def __reduce__(self):
        return type(self), (self.reason, self.detail, self.message)


_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "TokenRefreshRequired", "InvalidSecurity", "AuthorizationHeaderMalformed"}
_FORBIDDEN = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "AccessControlListNotSupported",
              "InvalidRequest", "403"}
_NO_BUCKET = {"NoSuchBucket", "PermanentRedirect", "InvalidBucketName"}
CREDENTIALS_FIX = ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (settings or environment) "
                   "and AWS_SESSION_TOKEN if the keys are temporary")


def store_error(exc: BaseException, config: S3Config) -> StoreError | None:
    """The StoreError for a botocore exception that every further request would meet too,
    else None (one object's failure: a 404, or a 5xx left after the retries)."""
    from botocore import exceptions as bx  # noqa: PLC0415

    where = config.uri
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = f"{code}: {error.get('Message') or exc}" if error.get("Message") else code
        if code in _CREDENTIALS:
            fix = CREDENTIALS_FIX
        elif code in _NO_BUCKET:
            fix = (f"create the bucket (aws s3 mb s3://{config.bucket}) or fix IMAGES_STORE"
                   + ("; for a bucket in another region set AWS_REGION_NAME" if code == "PermanentRedirect" else ""))
        elif code in _FORBIDDEN:
            fix = ("these credentials may not use the bucket: allow s3:ListBucket, s3:GetObject, s3:PutObject "
                   f"and s3:DeleteObject on {config.bucket} (and s3:PutObjectAcl with IMAGES_STORE_S3_ACL), "
                   f"or {CREDENTIALS_FIX}")
        else:
            return None
        return StoreError("store-not-writable", detail, f"cannot write to IMAGES_STORE {where} ({detail}): {fix}")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StoreError("store-not-writable", str(exc),
                          f"cannot write to IMAGES_STORE {where} ({exc}): {CREDENTIALS_FIX}")
    if isinstance(exc, bx.SSLError):
        return StoreError("store-unreachable", str(exc), (
            f"cannot reach IMAGES_STORE {where} over TLS ({exc}): for a server with a certificate of its "
            "own CA give -s AWS_VERIFY=/path/to/ca.pem (or AWS_CA_BUNDLE); for one without TLS, an http:// "
            "AWS_ENDPOINT_URL"))
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        endpoint = config.endpoint_url or "AWS"
        return StoreError("store-unreachable", str(exc), (
            f"cannot reach IMAGES_STORE {where} at {endpoint} ({exc}): check AWS_ENDPOINT_URL, "
            "AWS_USE_SSL and that the server is up"))
    return None


def _failed(exc: Exception, config: S3Config, what: str) -> Failed:
    """Any botocore exception as a Failed (pickles back from a worker with its reason)."""
    error = store_error(exc, config)
    if error is not None:
        return error
    return Failed("store-failed", f"{what}: {str(exc).splitlines()[0][:300]}")


NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# A conditional write whose condition did not hold; 409 when another one raced it.
CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# -- the bucket as a store ---------------------------------------------------------------

@dataclass(frozen=True)
class S3Objects:
    """The objects of one store, as the image workers write them and the index thread
    checks them. ``signature`` names the IMAGES_THUMBS the thumbnails are made for; it goes
    into each original's metadata with the image's facts, so that a crawl whose index does
    not know an original can take it from the bucket as it is (see :meth:`find`)."""

    config: S3Config
    signature: str = ""
    max_bytes: int = 0  # the largest object read back (0: any)

    @property
    def client(self):
        return client(self.config)

    def locate(self, relative: str) -> str:
        return self.config.key(relative)

    def _call(self, what: str, fn, *, missing_ok: bool = False, conflict_ok: bool = False, **kwargs):
        """``fn`` on the bucket; None for a missing object if ``missing_ok``, for a condition
        that did not hold if ``conflict_ok``; any other failure as a Failed (a StoreError
        when the store itself fails)."""
        try:
            return fn(Bucket=self.config.bucket, **kwargs)
        except Exception as exc:
            if (missing_ok and _error_code(exc) in NOT_FOUND) or (conflict_ok and _error_code(exc) in CONFLICT):
                return None
            raise _failed(exc, self.config, what) from None

    # Used by the image workers (``key`` from :meth:`locate`).

    def write_all(self, writes: list[tuple[str, bytes, str, dict | None]]) -> None:
        """Each ``(key, data, format, facts)`` as :meth:`write`, all at once: an image costs
        one round trip, not one per thumbnail. The first failure is raised."""
        if len(writes) == 1:
            self.write(*writes[0])
            return
        for done in [_uploads().submit(self.write, *write) for write in writes]:
            done.result()

    def write(self, key: str, data: bytes, fmt: str | None = None, facts: dict | None = None) -> None:
        """Put one object with its media type; an original's ``facts`` go with it as metadata.
        Written whole or not at all (a PUT), so no order between an image's objects matters:
        whoever finds an original without its record checks its thumbnails too."""
        extra = {"ContentType": MEDIA_TYPES.get(fmt or "", "application/octet-stream")}
        if fmt == "SVG":
            # Shown by <img> anywhere (which runs no script), never opened as a page on the
            # bucket's own origin, where a script in it would run.
            extra["ContentDisposition"] = "attachment"
        if facts is not None:
            extra["Metadata"] = self.metadata(facts)
        if self.config.acl:
            extra["ACL"] = self.config.acl
        self._call(f"PUT {key}", self.client.put_object, Key=key, Body=data, **extra)

    def read(self, key: str) -> bytes:
        response = self._call(f"GET {key}", self.client.get_object, Key=key, missing_ok=True)
        if response is None:
            raise FileNotFoundError(key)  # gone since it was found: as a missing local file
        if self.max_bytes and response["ContentLength"] > self.max_bytes:
            response["Body"].close()
            raise Failed("too-large", f"{key} is {response['ContentLength']} bytes, over {self.max_bytes}")
        with response["Body"] as body:
            return body.read()

    def metadata(self, facts: dict) -> dict[str, str]:
        return {
            "sha256": facts["sha256"], "format": facts["format"],
            "width": str(facts["width"]), "height": str(facts["height"]),
            "thumbs": json.dumps(sorted(facts["thumbs"])), "thumbs-signature": _digest(self.signature),
            "phash": facts.get("phash") or "",  # none for an SVG
        }

    # Used on the index thread (``paths`` relative to the store), as StoredImages uses
    # the local files.

    def head(self, relative: str) -> dict | None:
        return self._call(f"HEAD {relative}", self.client.head_object, Key=self.locate(relative), missing_ok=True)

    def present(self, paths) -> bool:
        return all(self.head(p) is not None for p in paths)

    def find(self, paths) -> dict | None:
        """The first of ``paths`` stored (they differ only in extension: one LIST finds
        them), as ``{"path", "stored_at"}``, plus ``facts`` when its metadata has them for
        thumbnails of this ``signature``."""
        paths = list(paths)
        if not paths:
            return None
        stem = os.path.commonprefix([self.locate(p) for p in paths])
        listed = self._call(f"LIST {stem}", self.client.list_objects_v2, Prefix=stem, MaxKeys=1000)
        keys = {item["Key"] for item in listed.get("Contents", [])}
        for path in paths:
            if self.locate(path) in keys and (head := self.head(path)) is not None:
                found = {"path": path, "stored_at": head["LastModified"].timestamp()}
                facts = self.facts(head)
                return {**found, "facts": facts} if facts else found
        return None

    def facts(self, head: dict) -> dict | None:
        meta = head.get("Metadata", {})
        try:
            if meta["thumbs-signature"] != _digest(self.signature):
                return None
            return {
                "sha256": meta["sha256"], "format": meta["format"], "width": int(meta["width"]),
                "height": int(meta["height"]), "bytes": head["ContentLength"], "thumbs": json.loads(meta["thumbs"]),
                "phash": meta["phash"] or None,
            }
        except (KeyError, ValueError):
            return None  # not written by imgcrawl, or by another version: read it instead

    def remove(self, paths) -> None:
        keys = [{"Key": self.locate(p)} for p in paths]
        if keys:
            self._call("DELETE", self.client.delete_objects, Delete={"Objects": keys, "Quiet": True})

    def probe(self) -> None:
        """One LIST under the prefix, with few retries: the credentials, the bucket and the
        endpoint checked before the crawl fetches anything. Raises StoreError."""
        try:
            client(self.config, attempts=2).list_objects_v2(Bucket=self.config.bucket, Prefix=self.config.prefix,
                                                          MaxKeys=1)
        except Exception as exc:
            error = store_error(exc, self.config)
            if error is None:  # a 5xx after the retries, or something unforeseen: no crawl either
                detail = str(exc).splitlines()[0][:300]
                error = StoreError("store-unreachable", detail, f"cannot use IMAGES_STORE {self.config.uri} ({detail})")
            raise error from None

    # Whole files (the contact sheet, a manifest), from the crawl process.

    def upload(self, relative: str, path: Path, content_type: str, **conditions) -> str | None:
        """Put a local file; its ETag, or None when ``conditions`` (``IfMatch``,
        ``IfNoneMatch``) did not hold."""
        extra = {"ACL": self.config.acl} if self.config.acl else {}
        with open(path, "rb") as body:
            response = self._call(f"PUT {relative}", self.client.put_object, Key=self.locate(relative), Body=body,
                                  ContentType=content_type, conflict_ok=bool(conditions), **extra, **conditions)
        return response["ETag"] if response is not None else None


@functools.cache
def _uploads() -> ThreadPoolExecutor:
    """The threads this process uploads an image's objects on, together."""
    return ThreadPoolExecutor(DEFAULT_CONNECTIONS, thread_name_prefix="imgcrawl-upload")


def _digest(signature: str) -> str:
    # S3 metadata is ASCII and small; thumbnail names need be neither.
    return hashlib.sha256(signature.encode()).hexdigest()[:32]


# -- the manifest --------------------------------------------------------------------------

class S3FeedStorage:
    """``FEED_STORAGES["s3"]``: a feed written into the bucket at the end of the crawl, from a
    local temporary file, with Scrapy's AWS settings (as the image store).

    The per-image manifest (the default ``FEEDS``) has the layout it has on disk
    (:class:`imgcrawl.merge.LocalManifest`): ``manifest.jsonl``, one line per image URL,
    and ``crawls/manifest-<UTC time>-<id>.jsonl``, each crawl's lines. S3 can neither append
    nor lock, so at the end of a crawl the manifest object is read, merged with this crawl's
    lines (:func:`imgcrawl.merge.merge_manifest`) and written back only if no other crawl
    wrote it meanwhile (a conditional PUT: ``If-Match``, or ``If-None-Match: *`` for the
    first); else it is read and merged again. So workers ending at once lose no line. Another
    feed that appends (``overwrite: False``) is read and extended the same way; any other is
    written as it is.

    A failure is one ERROR line (none when the pipeline has said the bucket fails so); the
    images stay stored and in the index, and the next crawl writes their lines (``uptodate``).
    """

    def __init__(self, uri: str, settings, *, feed_options: dict | None = None, stats=None):
        self.stats = stats
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        key = re.sub(r"/{2,}", "/", key)  # %(images_store)s/manifest.jsonl with a prefix ending in /
        self.uri = f"s3://{bucket}/{key}"
        self.key = key
        try:
            config = config_from_settings(f"s3://{bucket}/", settings, "FEED_STORAGE_S3_ACL")
        except ValueError as exc:
            # Said when there is something to store: with the images' bucket, the pipeline
            # has refused the setting already, and nothing is stored.
            self.objects, self.error = None, str(exc)
        else:
            self.objects, self.error = S3Objects(config), None
        options = feed_options or {}
        self.per_image = bool(options.get("imgcrawl_per_image"))
        self.append = options.get("overwrite", True) is False
        self.content_type = FEED_MEDIA_TYPES.get(options.get("format", ""), "application/octet-stream")
        self.journal_key = ""
        # After a merge: the manifest as this crawl wrote it, for the contact sheet.
        self.merged = False
        self.scratch: tempfile.TemporaryDirectory | None = None
        self.etag = ""

    @classmethod
    def from_crawler(cls, crawler, uri: str, *, feed_options: dict | None = None):
        return cls(uri, crawler.settings, feed_options=feed_options, stats=crawler.stats)

    def open(self, spider):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        directory, _, name = self.key.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        self.journal_key = f"{directory}/crawls/{stem}-{stamp}-{os.urandom(4).hex()}.jsonl".lstrip("/")
        return tempfile.NamedTemporaryFile(prefix="imgcrawl-feed-", suffix=Path(self.key).suffix)

    def store(self, file):
        from twisted.internet.threads import deferToThread  # noqa: PLC0415

        return deferToThread(self._store, file)

    def _store(self, file) -> None:
        file.flush()
        lines = Path(file.name)
        try:
            if self.error:
                raise Failed("bad-setting", self.error)
            if self.per_image:
                images = self._rewrite(lambda current, out: _merge(current, lines, out))
                self.merged = True
                self.objects.upload(self.journal_key, lines, self.content_type)
                logger.info("Manifest: %d images in %s (this crawl's lines are kept in s3://%s/%s)",
                            images, self.uri, self.objects.config.bucket, self.journal_key)
            elif self.append:
                self._rewrite(lambda current, out: _concatenate(current, lines, out))
            else:
                self.objects.upload(self.key, lines, self.content_type)
        except Failed as exc:
            if self.stats is not None and self.stats.get_value(f"imgcrawl/failed/{exc.reason}"):
                # The pipeline has said, at ERROR, that the store fails this way.
                logger.info("The manifest %s was not written either (%s)", self.uri, exc.detail)
                return
            message = getattr(exc, "message", None) or exc.detail
            logger.error("imgcrawl: the manifest %s was not written: %s; the images stored are in the index, "
                         "and the next crawl writes their lines", self.uri, message)
        finally:
            file.close()

    def _rewrite(self, build):
        """Read the object, ``build(current, out)`` its new content, and write that back if
        the object is still as read; else again. Returns what ``build`` returned."""
        for _ in range(APPEND_ATTEMPTS):
            scratch = tempfile.TemporaryDirectory(prefix="imgcrawl-feed-")
            current, out = Path(scratch.name) / "current", Path(scratch.name) / "new"
            condition = self._read(current)
            built = build(current, out)
            etag = self.objects.upload(self.key, out, self.content_type, **condition)
            if etag is not None and self.per_image:
                self.scratch, self.etag = scratch, etag  # kept for read_merged, while this storage lives
                return built
            scratch.cleanup()
            if etag is not None:
                return built
            time.sleep(0.1)  # another crawl wrote it meanwhile: read it again
        raise Failed("store-failed", f"{self.uri} kept changing under {APPEND_ATTEMPTS} attempts to write it")

    def _read(self, into: Path) -> dict:
        """The object as it is now, into ``into``; the condition for writing it back."""
        response = self.objects._call(f"GET {self.key}", self.objects.client.get_object, Key=self.key,
                                      missing_ok=True)
        if response is None:  # the first crawl to write it, unless another one is first
            into.touch()
            return {"IfNoneMatch": "*"}
        with response["Body"] as body, open(into, "wb") as out:
            while chunk := body.read(1 << 20):
                out.write(chunk)
        return {"IfMatch": response["ETag"]}

    def read_merged(self, use):
        """``use(lines)`` over the manifest this crawl wrote, unless a later crawl has merged
        since (its sheet comes after this one's); blocking: call it on a thread."""
        from imgcrawl.merge import FileLines  # noqa: PLC0415 - Scrapy-free module import time

        head = self.objects._call(f"HEAD {self.key}", self.objects.client.head_object, Key=self.key,
                                  missing_ok=True)
        if head is None or head["ETag"] != self.etag:
            return None
        try:
            return use(FileLines(Path(self.scratch.name) / "new"))
        finally:
            self.scratch.cleanup()


def _merge(current: Path, lines: Path, out: Path) -> int:
    from imgcrawl.merge import FileLines, merge_manifest  # noqa: PLC0415 - see read_merged

    count = 0
    with open(out, "wb") as f:
        for line in merge_manifest([FileLines(current), FileLines(lines)], scratch_dir=out.parent):
            f.write(line)
            count += 1
    return count


def _concatenate(current: Path, lines: Path, out: Path) -> None:
    with open(out, "wb") as f, open(current, "rb") as old, open(lines, "rb") as new:
        for source in (old, new):
            while chunk := source.read(1 << 20):
                f.write(chunk)


def local_index_path(config: S3Config) -> Path:
    """The default SQLite index of an S3 store: in the user's cache directory, one per store."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "imgcrawl" / config.cache_name() / "index.sqlite"
