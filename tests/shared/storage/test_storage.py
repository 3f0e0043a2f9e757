import time

import httpx
import pytest

from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.storage.objects import LocalStore, ObjectNotFound, make_store
from tests.support.services import closed_port, s3_env


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch):
    for k, v in s3_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    return make_store(Settings())


@pytest.fixture
def local_store(tmp_path):
    return LocalStore(tmp_path / "objects", base_url="http://api.example", secret="s3cret", expires_s=60)


@pytest.fixture(params=["s3", "local"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


def test_put_get_list_delete(store):
    store.put("jobs/a/x/1.png", b"one")
    store.put("jobs/a/x/1.png", b"one again")  # overwrite, never a second object
    store.put("jobs/a/y.json", b"{}")
    store.put("jobs/b/z.json", b"{}")
    assert store.get("jobs/a/x/1.png") == b"one again"
    assert store.list("jobs/a/") == ["jobs/a/x/1.png", "jobs/a/y.json"]
    assert store.exists("jobs/a/y.json") and not store.exists("jobs/a/nope")
    with pytest.raises(ObjectNotFound):
        store.get("jobs/a/nope")
    assert store.delete_prefix("jobs/a/") == 2
    assert store.list("jobs/a/") == [] and store.list("jobs/b/") == ["jobs/b/z.json"]


def test_bad_keys_are_refused(store):
    for bad in ("/abs", "a/../b", "a//b", "dir/"):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_s3_presigned_urls_download_and_use_the_public_endpoint(s3_endpoint, monkeypatch):
    for k, v in s3_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    store = make_store(Settings())
    store.put("jobs/p/image.png", b"PNGDATA")
    url = store.presign("jobs/p/image.png", download_name="x.png")
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"PNGDATA"
    assert r.headers["content-type"] == "image/png"
    # signed for the public host: the host is in the URL, and rewriting it breaks the signature
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("DSGEN_S3_PUBLIC_ENDPOINT_URL", public)
    url2 = make_store(Settings()).presign("jobs/p/image.png")
    assert url2.startswith(public + "/")
    assert httpx.get(url2).content == b"PNGDATA"


def test_s3_presigned_urls_are_reused_for_a_share_of_their_lifetime(s3_store, monkeypatch):
    """A polled samples page does not re-sign every URL (botocore: 0.14 ms each); a reused URL
    still has most of its lifetime left, and another key, lifetime or file name is signed anew."""
    import datetime as dt

    import botocore.auth

    start = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    elapsed = [0.0]  # both clocks: the cache's and botocore's (it signs to the second)
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0 + elapsed[0])
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda *a, **k: start + dt.timedelta(seconds=elapsed[0]))
    s3_store.put("jobs/p/a.png", b"A")
    first = s3_store.presign("jobs/p/a.png", expires_s=400)
    elapsed[0] = 99  # within a quarter of 400 s: the same URL (signing now would give another)
    assert s3_store.presign("jobs/p/a.png", expires_s=400) == first
    assert s3_store.presign("jobs/p/a.png", expires_s=400, download_name="a.png") != first
    assert s3_store.presign("jobs/p/b.png", expires_s=400) != first
    elapsed[0] = 101  # past a quarter: signed again
    again = s3_store.presign("jobs/p/a.png", expires_s=400)
    assert again != first and httpx.get(again).content == b"A"


def test_s3_down_is_service_unavailable(monkeypatch):
    for k, v in s3_env(f"http://127.0.0.1:{closed_port()}").items():
        monkeypatch.setenv(k, v)
    store = make_store(Settings())
    started = time.time()
    with pytest.raises(ServiceUnavailable) as err:
        store.check()
    assert err.value.component == "storage"
    with pytest.raises(ServiceUnavailable):
        store.put("jobs/a/b.png", b"x")
    assert time.time() - started < 20


def test_missing_bucket_is_service_unavailable(s3_endpoint, monkeypatch):
    for k, v in s3_env(s3_endpoint, bucket="no-such-bucket").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ServiceUnavailable, match="bucket"):
        make_store(Settings()).check()


def test_local_links_are_signed_and_expire(local_store):
    local_store.put("jobs/a/f.png", b"x")
    url = local_store.presign("jobs/a/f.png")
    q = httpx.URL(url).params
    assert url.startswith("http://api.example/v1/files/jobs/a/f.png?")
    assert local_store.verify("jobs/a/f.png", int(q["expires"]), q["sig"])
    assert not local_store.verify("jobs/a/other.png", int(q["expires"]), q["sig"])
    assert not local_store.verify("jobs/a/f.png", int(q["expires"]) + 1, q["sig"])
    assert not local_store.verify("jobs/a/f.png", int(time.time()) - 1,
                                  local_store._sig("jobs/a/f.png", int(time.time()) - 1))
