"""S3 access for the whole factory, over the minio SDK (any S3-compatible server).

Why a wrapper: every caller needs the same four things the raw SDK leaves to them.
1. Errors a person can act on. An unreachable endpoint or rejected credentials raise one
   `StorageUnavailable` / `StorageAuthError` naming the endpoint and the setting to change, after a
   short bounded retry, instead of a stack of urllib3 retries.
2. Retries with exponential backoff on transient failures (connection resets, 5xx, SlowDown).
3. Claim-by-move that is safe when claimers race: a conditional write (``If-None-Match: *``) of a
   claim marker decides the single winner, who then copies and deletes.
4. User metadata in and out as plain ``str -> str`` dicts (non-ASCII values percent-encoded, since
   S3 headers are ASCII).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import MinioException, S3Error, ServerError

from gen_engine.config import Settings
from gen_engine.errors import GenEngineError, TransientError, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_META_PREFIX = "x-amz-meta-"
MULTIPART_PART_SIZE = 16 * 1024 * 1024


class StorageError(GenEngineError, RuntimeError):
    """An S3 failure after the client's own retries; the message says what to do."""


class StorageUnavailable(StorageError, TransientError):
    """The S3 endpoint cannot be reached (transient: worth retrying later)."""


class StorageAuthError(StorageError, UserError):
    """The S3 server rejected the credentials, or none are set (a setup mistake)."""


class ObjectNotFound(StorageError, UserError, KeyError):
    """The object (or bucket) does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or stat says about one object."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None
    metadata: dict[str, str]


MAX_METADATA_BYTES = 2048  # AWS S3's limit on user-defined metadata per object


def encode_meta(value: str) -> str:
    """S3 metadata is ASCII-only: percent-encode anything else (decoded by `decode_meta`)."""
    return urllib.parse.quote(str(value), safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")


def decode_meta(value: str) -> str:
    return urllib.parse.unquote(value)


class Storage:
    """A handle on one S3 endpoint. Thread-safe (the SDK's urllib3 pool is)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str | None = None,
        retries: int = 4,
        timeout_s: float = 10.0,
        endpoint_setting: str = "GEN_S3_ENDPOINT",
    ) -> None:
        self.endpoint = endpoint
        self.url = f"{'https' if secure else 'http'}://{endpoint}"
        self.retries = retries
        self._endpoint_setting = endpoint_setting
        # Retries are ours (bounded, with a clear final error); urllib3 must not retry on its own.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
            maxsize=32,
        )
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region,
            http_client=http,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """Build from the typed settings; missing credentials are a clear error, not a 403 later."""
        if settings.s3_access_key is None or settings.s3_secret_key is None:
            raise StorageAuthError(
                f"No S3 credentials for {settings.s3_url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or GEN_S3_ACCESS_KEY / GEN_S3_SECRET_KEY). `make` targets set local defaults."
            )
        return cls(
            settings.s3_address,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            retries=settings.s3_retries,
            timeout_s=settings.s3_timeout_s,
        )

    # --- the retry/translate core -------------------------------------------------------------------
    def _call(
        self, what: str, fn: Callable[[], T], *, bucket: str | None = None, key: str | None = None,
        retries: int | None = None,
    ) -> T:
        """Run one SDK call with backoff on transient failures and translate the rest."""
        retries = self.retries if retries is None else retries
        delay = 0.1
        for attempt in range(retries + 1):
            try:
                return fn()
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                    where = f"s3://{bucket}/{key}" if key else f"bucket '{bucket}'"
                    hint = " (create it with `make services-up`)" if e.code == "NoSuchBucket" else ""
                    raise ObjectNotFound(f"{what}: {where} does not exist on {self.url}{hint}") from None
                if e.code in _AUTH_CODES:
                    raise StorageAuthError(
                        f"{what}: the S3 server at {self.url} rejected the credentials ({e.code}). "
                        "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or GEN_S3_ACCESS_KEY / "
                        "GEN_S3_SECRET_KEY) and the bucket policy."
                    ) from None
                if e.code not in _TRANSIENT_CODES:
                    raise StorageError(f"{what} on {self.url} failed: {e.code}: {e.message}") from None
                err: Exception = e
            except ServerError as e:  # non-XML 5xx answer (proxy, server restarting)
                err = e
            except (urllib3.exceptions.HTTPError, OSError) as e:  # refused, reset, timeout
                err = e
            except MinioException as e:
                raise StorageError(f"{what} on {self.url} failed: {e}") from None
            if attempt < retries:
                log.debug("%s: transient failure (%s), retry %d in %.1fs", what, err, attempt + 1, delay)
                time.sleep(delay)
                delay *= 2
        if isinstance(err, S3Error | ServerError):
            raise StorageError(f"{what}: {self.url} kept failing after {retries} retries: {err}") from None
        raise StorageUnavailable(
            f"{what}: cannot reach the S3 server at {self.url} ({_root_cause(err)}). Is it running? "
            f"Start the local one with `make services-up`, or point {self._endpoint_setting} at your server."
        ) from None

    # --- buckets ------------------------------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (idempotent, tolerant of a concurrent creator)."""
        if self._call("bucket_exists", lambda: self.client.bucket_exists(bucket), bucket=bucket):
            return
        try:
            self._call("make_bucket", lambda: self.client.make_bucket(bucket), bucket=bucket)
        except StorageError as e:
            if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                raise

    def check(self) -> None:
        """Raise a clear error unless the endpoint answers and accepts the credentials."""
        self._call("list_buckets", self.client.list_buckets)

    # --- objects ------------------------------------------------------------------------------------
    def put_bytes(
        self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Write one object from memory; returns its ETag."""
        headers = _meta_headers(metadata)
        res = self._call(
            "put_object",
            lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata=headers
            ),
            bucket=bucket, key=key,
        )
        return res.etag

    def put_file(
        self, bucket: str, key: str, path: str | Path, *, content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Stream a local file up (multipart above 16 MiB: never read whole into memory)."""
        headers = _meta_headers(metadata)
        res = self._call(
            "fput_object",
            lambda: self.client.fput_object(
                bucket, key, str(path), content_type=content_type, metadata=headers,
                part_size=MULTIPART_PART_SIZE,
            ),
            bucket=bucket, key=key,
        )
        return res.etag

    def put_stream(
        self, bucket: str, key: str, stream: io.RawIOBase | io.BufferedIOBase, *,
        content_type: str = "application/octet-stream", metadata: dict[str, str] | None = None,
    ) -> str:
        """Upload a stream of unknown length in 16 MiB parts. Not retried: a stream cannot rewind."""
        headers = _meta_headers(metadata)
        res = self._call(
            "put_object(stream)",
            lambda: self.client.put_object(
                bucket, key, stream, -1, content_type=content_type, metadata=headers,
                part_size=MULTIPART_PART_SIZE,
            ),
            bucket=bucket, key=key, retries=0,
        )
        return res.etag

    def get_bytes(self, bucket: str, key: str) -> bytes:
        def fetch() -> bytes:
            resp = self.client.get_object(bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get_object", fetch, bucket=bucket, key=key)

    def get_file(self, bucket: str, key: str, path: str | Path) -> Path:
        """Download to a local file (streamed to disk)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call("fget_object", lambda: self.client.fget_object(bucket, key, str(path)), bucket=bucket, key=key)
        return path

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and user metadata of one object; `ObjectNotFound` if it does not exist."""
        st = self._call("stat_object", lambda: self.client.stat_object(bucket, key), bucket=bucket, key=key)
        return ObjectInfo(key, st.size or 0, (st.etag or "").strip('"'), st.last_modified, _user_meta(st.metadata))

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def list(self, bucket: str, prefix: str = "", *, recursive: bool = True) -> list[ObjectInfo]:
        """Objects under a prefix, sorted by key (folders are skipped)."""
        def fetch() -> list[ObjectInfo]:
            return [
                ObjectInfo(o.object_name, o.size or 0, (o.etag or "").strip('"'), o.last_modified, {})
                for o in self.client.list_objects(bucket, prefix=prefix, recursive=recursive)
                if not o.is_dir
            ]

        return sorted(self._call("list_objects", fetch, bucket=bucket), key=lambda o: o.key)

    def iter_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        yield from (o.key for o in self.list(bucket, prefix))

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object (no error if it is already gone)."""
        self._call("remove_object", lambda: self.client.remove_object(bucket, key), bucket=bucket, key=key)

    def copy(self, bucket: str, src: str, dst: str, *, dst_bucket: str | None = None) -> None:
        """Server-side copy, metadata included."""
        self._call(
            "copy_object",
            lambda: self.client.copy_object(dst_bucket or bucket, dst, CopySource(bucket, src)),
            bucket=bucket, key=src,
        )

    def presigned_get(self, bucket: str, key: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """A time-limited GET URL for one object (for galleries; needs no credentials to open)."""
        return self._call(
            "presigned_get_object",
            lambda: self.client.presigned_get_object(bucket, key, expires=expires),
            bucket=bucket, key=key,
        )

    # --- conditional writes ------------------------------------------------------------------------
    def put_if(self, bucket: str, key: str, data: bytes, *, if_match: str | None = None) -> str | None:
        """Write ``key`` only if it does not exist (``if_match`` None) or still has ETag ``if_match``.
        Returns the new ETag, or None when the condition did not hold (another writer was first)."""
        cond = {"If-Match": f'"{if_match}"'} if if_match else {"If-None-Match": "*"}
        try:
            res = self._call("conditional put", lambda: self.client._put_object(bucket, key, data, headers=dict(cond)),
                             bucket=bucket, key=key)
        except StorageError as e:
            if _precondition_failed(e):
                return None
            raise
        return (res.etag or "").strip('"')

    def delete_if(self, bucket: str, key: str, etag: str) -> bool:
        """Delete ``key`` only if it still has ETag ``etag`` (not a newer upload of the same key).
        False when it changed; True when deleted or already gone."""
        try:
            self._call("conditional delete",
                       lambda: self.client._execute("DELETE", bucket, key, headers={"If-Match": f'"{etag}"'}),
                       bucket=bucket, key=key)
        except StorageError as e:
            if _precondition_failed(e):
                return False
            raise
        return True

    def get_with_etag(self, bucket: str, key: str) -> tuple[bytes, str]:
        """An object's bytes and the ETag of exactly those bytes (one GET)."""
        def fetch() -> tuple[bytes, str]:
            resp = self.client.get_object(bucket, key)
            try:
                return resp.read(), (resp.headers.get("ETag") or "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

        return self._call("get_object", fetch, bucket=bucket, key=key)

    # --- claim-by-move -------------------------------------------------------------------------------
    def claim(self, bucket: str, src: str, dst: str, *, etag: str | None = None, lease_s: float = 300.0,
              owner: str | None = None) -> bool:
        """Move ``src`` to ``dst`` if and only if this caller wins; exactly one of racing callers does.

        A plain copy-then-delete lets two claimers both "win". Here a claim marker ``dst + '.claim'``
        is created with a conditional write (``If-None-Match: *``), which the server lets exactly one
        writer do. The marker names its owner (host and process) and an expiry ``lease_s`` ahead: a
        claimer killed before it removed its marker blocks the name only until then, after which the
        next claimer takes the marker over with a write conditional on the stale marker's ETag (so of
        several takers, one wins). The winner copies and deletes, then removes its marker so that a
        later object of the same name can be claimed again. With ``etag`` (what the caller listed), the
        copy is of exactly that content and the delete is conditional on it: a newer upload of the same
        key that arrived meanwhile is left in place for the next claim. A retried marker write that had
        in fact succeeded is recognised by the token inside it. Returns False for losers and when
        ``src`` is gone (or no longer has ``etag``).
        """
        marker = dst + ".claim"
        token = uuid.uuid4().hex
        body = json.dumps({"token": token, "owner": owner or f"{socket.gethostname()}:{os.getpid()}",
                           "expires_at": time.time() + lease_s}).encode()
        mine = self.put_if(bucket, marker, body)
        if mine is None:
            mine = self._take_over(bucket, marker, token, body)
            if mine is None:
                return False
        try:
            try:
                self._call("copy_object", lambda: self.client.copy_object(
                    bucket, dst, CopySource(bucket, src, match_etag=etag)), bucket=bucket, key=src)
            except ObjectNotFound:
                return False  # someone else moved it before we won the marker
            except StorageError as e:
                if _precondition_failed(e):
                    return False  # src changed since it was listed: claim the new content next time
                raise
            if etag:
                if not self.delete_if(bucket, src, etag):
                    log.warning("s3://%s/%s changed while it was claimed; the newer upload is left in place", bucket,
                                src)
            else:
                self.delete(bucket, src)
            return True
        finally:
            self.delete_if(bucket, marker, mine)

    def _take_over(self, bucket: str, marker: str, token: str, body: bytes) -> str | None:
        """The marker is taken: ours (a retried write that succeeded), live (None), or stale (take it over)."""
        try:
            held, held_etag = self.get_with_etag(bucket, marker)
        except ObjectNotFound:
            return self.put_if(bucket, marker, body)  # released meanwhile: try once more
        try:
            doc = json.loads(held)
            holder, expires, who = doc["token"], float(doc["expires_at"]), str(doc.get("owner"))[:80]
        except (ValueError, KeyError, TypeError, AttributeError):
            # an old-style (bare token) or broken marker: no expiry to honour, so it is stale
            holder, expires, who = held.decode("utf-8", "replace"), 0.0, "an unknown owner"
        if holder == token:
            return held_etag
        if time.time() < expires:
            return None
        log.warning("claim marker s3://%s/%s of %s expired; taking it over", bucket, marker, who)
        return self.put_if(bucket, marker, body, if_match=held_etag)


def _precondition_failed(err: StorageError) -> bool:
    return "PreconditionFailed" in str(err) or "ConditionalRequestConflict" in str(err)


def metadata_size(metadata: dict[str, str]) -> int:
    """User metadata's size as AWS counts it: the UTF-8 bytes of every key and (encoded) value."""
    return sum(len(k.encode()) + len(encode_meta(v).encode()) for k, v in metadata.items())


def _meta_headers(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """The metadata as request headers; refused over AWS's 2 KB (SeaweedFS and MinIO accept more, so an
    upload that works here would fail on every AWS request)."""
    if not metadata:
        return None
    if (n := metadata_size(metadata)) > MAX_METADATA_BYTES:
        biggest = max(metadata, key=lambda k: len(encode_meta(metadata[k])))
        raise ValueError(f"object metadata is {n} bytes, over S3's {MAX_METADATA_BYTES} (largest: '{biggest}'); "
                         "keep ids and hashes in metadata and the rest in the object")
    return {f"{_META_PREFIX}{k}": encode_meta(v) for k, v in metadata.items()}


def _user_meta(headers: object) -> dict[str, str]:
    """The user metadata of a stat answer, prefix stripped, keys lower-cased, values decoded."""
    out: dict[str, str] = {}
    for k, v in dict(headers or {}).items():  # type: ignore[call-overload]
        lk = k.lower()
        if lk.startswith(_META_PREFIX):
            out[lk[len(_META_PREFIX) :]] = decode_meta(v)
    return out


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a urllib3 error chain, e.g. 'Connection refused'."""
    reason = getattr(err, "reason", None)
    while reason is not None and getattr(reason, "reason", None) is not None:
        reason = reason.reason
    text = str(reason or err)
    for known in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if known in text:
            return known
    return text[:200]
