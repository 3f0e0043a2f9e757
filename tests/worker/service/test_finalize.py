import io
import json
import zipfile

from shared.db.models import Job
from shared.jobs import repository as jobs_repo
from shared.storage import keys
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
        assert jobs_repo.get_job(uow.session, job).status == "succeeded"
        exports = {e.format: e for e in jobs_repo.list_exports(uow.session, job)}
    assert set(exports) == {"coco", "yolo"}
    coco = zipfile.ZipFile(io.BytesIO(ctx.store.get(exports["coco"].key)))
    train = json.loads(coco.read("annotations/instances_train.json"))
    assert train["categories"][0]["name"] == "cat"
    manifest = json.loads(ctx.store.get(keys.manifest_key(job)))
    # Every sample of both shards, once, and the files of the two archives with their sizes.
    with ctx.uow() as uow:
        indexes = sorted(s.index for s in jobs_repo.list_samples(uow.session, job))
    assert sorted(s["index"] for s in manifest["samples"]) == indexes and len(indexes) > 1
    assert sum(manifest["splits"].values()) == len(indexes)
    assert {rel.split("/", 1)[0] for rel in manifest["files"]} == {"coco", "yolo"}
    assert manifest["files"]["coco/annotations/instances_train.json"]["bytes"] == len(
        coco.read("annotations/instances_train.json"))
    assert finalize_job(ctx, job) == "skipped"  # a second delivery is a no-op


def test_finalize_refuses_an_incomplete_job_and_retries(ctx, submit):
    job = submit()
    run_shard(ctx, job, 0)
    with ctx.uow() as uow:
        uow.session.execute(Job.__table__.update().where(Job.id == job).values(status="finalizing", finalize_attempts=1))
    assert finalize_job(ctx, job) == "requeued"
    assert finalize_job(ctx, job) == "failed"  # max_attempts=2
    with ctx.uow() as uow:
        assert "4 samples written, 6 expected" in jobs_repo.get_job(uow.session, job).error
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
        return {e.format: ctx.store.get(e.key) for e in jobs_repo.list_exports(uow.session, job)}


def test_finalize_reads_one_fragment_per_shard_and_no_sample(ctx, submit):
    job = submit()
    for shard in range(2):
        run_shard(ctx, job, shard)
    ctx.store = CountingStore(ctx.store)
    assert finalize_job(ctx, job) == "succeeded"
    assert sorted(ctx.store.gets) == sorted(keys.fragment_key(job, i) for i in range(2))


def test_finalize_from_fragments_gives_the_single_pass_exports_of_all_samples(ctx, submit, tmp_path):
    """The archives' files and the manifest are byte for byte what `write_exports` over every
    sample of the job writes (the single-pass design finalize used before)."""
    from shared.formats.export import write_exports
    from shared.formats.spec import JobSpec
    from worker.service.shards import fetch_samples

    job = submit(num_images=11, export={"formats": ["coco", "yolo", "voc", "hf", "masks", "webdataset"],
                                         "splits": {"train": 0.5, "val": 0.3, "test": 0.2}})
    for shard in range(3):
        run_shard(ctx, job, shard)
    assert finalize_job(ctx, job) == "succeeded"
    with ctx.uow() as uow:
        spec = JobSpec.model_validate(jobs_repo.get_job(uow.session, job).spec)
    single = tmp_path / "single"
    manifest = write_exports(single, spec, fetch_samples(ctx, job, 4, list(range(11)), single))
    assert ctx.store.get(keys.manifest_key(job)) == manifest.read_bytes()
    archives = _archives(ctx, job)
    assert set(archives) == set(spec.export.formats)
    for fmt, data in archives.items():
        zf = zipfile.ZipFile(io.BytesIO(data))
        expected = {p.relative_to(single / fmt).as_posix(): p.read_bytes()
                    for p in (single / fmt).rglob("*") if p.is_file()}
        assert {n: zf.read(n) for n in zf.namelist()} == expected, fmt


def test_a_fragment_of_an_older_version_is_rebuilt_from_the_samples(ctx, submit):
    first, second = submit(), submit()
    for job in (first, second):
        for shard in range(2):
            run_shard(ctx, job, shard)
    # the second job's shard 0 fragment as the version before fragment.json made it
    path = ctx.store.path_of(keys.fragment_key(second, 0))
    old = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in old.namelist():
            if name != "fragment.json":
                zf.writestr(name, old.read(name))
    path.write_bytes(buf.getvalue())
    ctx.store = CountingStore(ctx.store)
    assert finalize_job(ctx, first) == "succeeded"
    assert finalize_job(ctx, second) == "succeeded"
    record_keys = {keys.sample_key(second, i, 4, "record.json") for i in range(4)}
    assert record_keys <= set(ctx.store.gets)  # the second job's shard 0 was exported from its samples
    first_gets = sorted(k for k in ctx.store.gets if k.startswith(keys.job_prefix(first)))
    assert first_gets == sorted(keys.fragment_key(first, i) for i in range(2))  # current: fragments only
    assert _archives(ctx, first) == _archives(ctx, second)
    assert ctx.store.get(keys.manifest_key(first)) == ctx.store.get(keys.manifest_key(second))


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
