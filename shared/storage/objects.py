"""Object storage: one interface, an S3 implementation (boto3; AWS, MinIO, any S3-compatible
server) and a local-folder implementation (embedded mode).

Keys come from `shared.storage.keys`. Presigned URLs of the S3 store are signed by a client
configured for the *public* endpoint: the Host header is part of the signature, so a URL
signed for `minio:9000` cannot be rewritten for clients afterwards.
"""
from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Protocol

from shared.config import Settings
from shared.errors import ServiceUnavailable

mimetypes.add_type("application/json", ".json")
mimetypes.add_type("application/zip", ".zip")


def content_type_of(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class ObjectNotFound(KeyError):
    pass


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def presign(self, key: str, expires_s: int | None = None, download_name: str | None = None) -> str: ...
    def check(self) -> None: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")[:-1]):
        raise ValueError(f"bad object key {key!r}")
    if key.endswith("/") or key.split("/")[-1] in (".", ".."):
        raise ValueError(f"bad object key {key!r}")
    return key


# --------------------------------------------------------------------------------------- S3
class S3Store:
    #: A presigned URL is handed out again for this share of its lifetime (at most
    #: PRESIGN_REUSE_MAX_S): a samples page signs five URLs per sample, 0.14 ms of botocore each
    #: (35 ms of CPU for a page of 50, which dashboards poll), and a reused URL stays valid for
    #: at least three quarters of its lifetime.
    PRESIGN_REUSE_SHARE = 0.25
    PRESIGN_REUSE_MAX_S = 300.0
    PRESIGN_CACHE_ENTRIES = 100_000

    def __init__(self, client, bucket: str, *, public_client=None, expires_s: int = 3600):  # noqa: ANN001
        self._c = client
        self._public = public_client or client
        self.bucket = bucket
        self.expires_s = expires_s
        self._signed: dict[tuple[str, int, str | None], tuple[float, str]] = {}

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(kwargs.get("Key", "")) from err
            if code == "NoSuchBucket":
                raise ServiceUnavailable("storage", f"bucket {self.bucket!r} does not exist") from err
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise ServiceUnavailable("storage", f"{code or status}") from err
            raise
        except BotoCoreError as err:  # connection refused, timeouts, DNS
            raise ServiceUnavailable("storage", str(err).splitlines()[0][:200]) from err

    def put(self, key: str, data: bytes) -> None:
        self._call(self._c.put_object, Bucket=self.bucket, Key=_check_key(key), Body=data,
                   ContentType=content_type_of(key))

    def put_file(self, key: str, path: Path) -> None:
        self._call(self._c.upload_file, str(path), self.bucket, _check_key(key),
                   ExtraArgs={"ContentType": content_type_of(key)})

    def get(self, key: str) -> bytes:
        return self._call(self._c.get_object, Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._call(self._c.head_object, Bucket=self.bucket, Key=key)
            return True
        except ObjectNotFound:
            return False

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self._c.list_objects_v2, **kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix needs a folder-like prefix ending in '/'")
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            self._call(self._c.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
        return len(keys)

    def presign(self, key: str, expires_s: int | None = None, download_name: str | None = None) -> str:
        import time

        expires = expires_s or self.expires_s
        cache_key = (key, expires, download_name)
        now = time.monotonic()
        hit = self._signed.get(cache_key)
        if hit is not None and now - hit[0] < min(self.PRESIGN_REUSE_SHARE * expires, self.PRESIGN_REUSE_MAX_S):
            return hit[1]
        params = {"Bucket": self.bucket, "Key": key}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        url = self._call(self._public.generate_presigned_url, "get_object", Params=params, ExpiresIn=expires)
        if len(self._signed) >= self.PRESIGN_CACHE_ENTRIES:
            self._signed.clear()  # a bounded cache: starting over costs one signature per URL
        self._signed[cache_key] = (now, url)
        return url

    def check(self) -> None:
        try:
            self._call(self._c.head_bucket, Bucket=self.bucket)
        except ObjectNotFound:
            raise ServiceUnavailable("storage", f"bucket {self.bucket!r} does not exist") from None


def make_s3_clients(settings: Settings):  # noqa: ANN201
    import boto3
    from botocore.config import Config

    def client(endpoint: str | None, timeouts: bool):  # noqa: ANN202
        cfg = Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=2 if timeouts else 60,
            read_timeout=60,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=cfg,
        )

    internal = client(settings.s3_endpoint_url, True)
    public_endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    public = client(public_endpoint, True) if public_endpoint != settings.s3_endpoint_url else internal
    return internal, public


# ------------------------------------------------------------------------------------ local
class LocalStore:
    """Objects as files under `root`; download links are HMAC-signed URLs served by the API
    (`GET /v1/files/{key}?expires=...&sig=...`)."""

    def __init__(self, root: Path, *, base_url: str, secret: str, expires_s: int = 3600):
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self._secret = secret.encode()
        self.expires_s = expires_s

    def path_of(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        dest = self.path_of(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def get(self, key: str) -> bytes:
        try:
            return self.path_of(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def list(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix needs a folder-like prefix ending in '/'")
        keys = self.list(prefix)
        folder = self.root / prefix.rstrip("/")
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            for k in keys:
                self.path_of(k).unlink(missing_ok=True)
        return len(keys)

    def _sig(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, key: str, expires_s: int | None = None, download_name: str | None = None) -> str:
        expires = int(time.time()) + (expires_s or self.expires_s)
        query = {"expires": expires, "sig": self._sig(_check_key(key), expires)}
        if download_name:
            query["name"] = download_name
        return f"{self.base_url}/v1/files/{urllib.parse.quote(key)}?{urllib.parse.urlencode(query)}"

    def verify(self, key: str, expires: int, sig: str) -> bool:
        if expires < time.time():
            return False
        try:
            expected = self._sig(_check_key(key), expires)
        except ValueError:
            return False
        return hmac.compare_digest(expected, sig)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ServiceUnavailable("storage", str(err)) from err
        if not os.access(self.root, os.W_OK):
            raise ServiceUnavailable("storage", f"{self.root} is not writable")


def make_store(settings: Settings) -> ObjectStore:
    if settings.storage == "local":
        return LocalStore(settings.local_storage_dir, base_url=settings.public_base_url,
                          secret=settings.signing_secret, expires_s=settings.presign_expiry_s)
    internal, public = make_s3_clients(settings)
    return S3Store(internal, settings.s3_bucket, public_client=public, expires_s=settings.presign_expiry_s)
