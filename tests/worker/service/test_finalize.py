import io
import json
import zipfile

from shared import keys
from shared.db import repositories as repo
from shared.db.models import Job
from worker.service.finalize import finalize_job, zip_folder
from worker.service.shards import run_shard


class RecordingStore:
    def __init__(self, inner):
        self.inner, self.puts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data):
        self.puts.append(key)
        self.inner.put(key, data)

    def put_file(self, key, path):
        self.puts.append(key)
        self.inner.put_file(key, path)


def test_finalize_uploads_one_archive_per_format_and_the_manifest_last(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    run_shard(ctx, job, 1)
    ctx.store = RecordingStore(ctx.store)
    assert finalize_job(ctx, job) == "succeeded"
    assert ctx.store.puts == [keys.export_key(job, "coco"), keys.export_key(job, "yolo"), keys.manifest_key(job)]
    with ctx.uow() as uow:
        assert repo.get_job(uow.session, job).status == "succeeded"
        exports = {e.format: e for e in repo.list_exports(uow.session, job)}
    assert set(exports) == {"coco", "yolo"}
    coco = zipfile.ZipFile(io.BytesIO(ctx.store.get(exports["coco"].key)))
    train = json.loads(coco.read("annotations/instances_train.json"))
    assert train["categories"][0]["name"] == "cat"
    manifest = json.loads(ctx.store.get(keys.manifest_key(job)))
    assert manifest  # written by the export writers
    assert finalize_job(ctx, job) == "skipped"  # a second delivery is a no-op


def test_finalize_refuses_an_incomplete_job_and_retries(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    with ctx.uow() as uow:
        uow.session.execute(Job.__table__.update().where(Job.id == job).values(status="finalizing", finalize_attempts=1))
    assert finalize_job(ctx, job) == "requeued"
    assert finalize_job(ctx, job) == "failed"  # max_attempts=2
    with ctx.uow() as uow:
        assert "4 samples written, 6 expected" in repo.get_job(uow.session, job).error
    assert not ctx.store.exists(keys.manifest_key(job))


def test_archives_are_byte_identical_every_time(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "b.txt").write_text("b")
    (tmp_path / "d" / "a.txt").write_text("a")
    zip_folder(tmp_path / "d", tmp_path / "1.zip")
    import time

    time.sleep(1.1)
    (tmp_path / "d" / "a.txt").touch()
    zip_folder(tmp_path / "d", tmp_path / "2.zip")
    assert (tmp_path / "1.zip").read_bytes() == (tmp_path / "2.zip").read_bytes()


class CountingStore(RecordingStore):
    def __init__(self, inner):
        super().__init__(inner)
        self.gets = []

    def get(self, key):
        self.gets.append(key)
        return self.inner.get(key)


def _archives(ctx, job):
    with ctx.uow() as uow:
        return {e.format: ctx.store.get(e.key) for e in repo.list_exports(uow.session, job)}


def test_a_shard_without_fragment_is_exported_from_its_samples_with_the_same_bytes(ctx, submit):
    first, second = submit(), submit()
    for job in (first, second):
        for shard in range(2):
            run_shard(ctx, job, shard)
    # the second job's shard 1 has no fragment (as if made by a version before fragments)
    path = ctx.store.path_of(keys.fragment_key(second, 1))
    assert path.is_file()
    path.unlink()
    assert finalize_job(ctx, first) == "succeeded"
    assert finalize_job(ctx, second) == "succeeded"
    a, b = _archives(ctx, first), _archives(ctx, second)
    assert set(a) == {"coco", "yolo"} and a == b
    assert ctx.store.get(keys.manifest_key(first)) == ctx.store.get(keys.manifest_key(second))
