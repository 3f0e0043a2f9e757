"""Uploaded source archives on a worker: downloaded from the object store once, extracted safely.

`UploadCache.fetch(id)` returns a local folder; a half-written extraction is never used (it
is made in a temporary folder and renamed into place), so concurrent or interrupted workers
are safe.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from shared.formats.spec import SpecError
from shared.sources.archives import Limits, archive_key, extract_archive
from shared.storage.objects import ObjectNotFound


class UploadCache:
    def __init__(self, store, root: Path, limits: Limits):
        self.store, self.root, self.limits = store, Path(root), limits
        self._lock = threading.Lock()

    def fetch(self, upload_id: str) -> Path:
        final = self.root / upload_id
        with self._lock:
            if final.is_dir():
                return final
            try:
                data = self.store.get(archive_key(upload_id))
            except (ObjectNotFound, KeyError):
                raise SpecError(f"source.upload: no upload {upload_id!r} in the object store", field="source.upload") from None
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{upload_id}-", dir=self.root))
            try:
                extract_archive(data, tmp / "data", self.limits)
                (tmp / "data").rename(final)
            except FileExistsError:
                pass  # another process finished first: its copy is complete
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return final


class DatasetCache:
    """Dataset versions on a worker: the samples of the version's (succeeded, immutable) job
    materialised once as a local dsgen folder (`spec.json`, `samples/NNNNNN/{image,semantic,
    instances}.png + record.json`, what `dsgen run` writes and the methods' dsgen loaders read),
    under `<root>/jobs/<job id>`, made in a temporary folder and renamed into place."""

    def __init__(self, store, root: Path, threads: int = 8):
        self.store, self.root, self.threads = store, Path(root) / "jobs", max(1, threads)
        self._lock = threading.Lock()

    def fetch(self, job_id, shard_size: int, num_images: int, spec: dict, field: str = "source.dataset") -> Path:
        final = self.root / str(job_id)
        with self._lock:
            if final.is_dir():
                return final
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{job_id}-", dir=self.root))
            try:
                self._materialise(job_id, shard_size, num_images, spec, tmp / "data", field)
                (tmp / "data").rename(final)
            except OSError:
                if not final.is_dir():  # the rename lost to another process's (complete) copy: use that
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return final

    def _materialise(self, job_id, shard_size: int, num_images: int, spec: dict, dest: Path, field: str) -> None:
        import json
        from concurrent.futures import ThreadPoolExecutor

        from shared.formats import layout
        from shared.formats.records import SampleRecord
        from shared.storage import keys

        dest.mkdir(parents=True)
        (dest / layout.SPEC_FILE).write_text(json.dumps(spec, indent=2))

        def one(index: int) -> None:
            folder = layout.sample_dir(dest, index)
            folder.mkdir(parents=True)
            try:
                record_bytes = self.store.get(keys.sample_key(job_id, index, shard_size, layout.RECORD_FILE))
                record = SampleRecord.model_validate_json(record_bytes)
                for name in (record.files.image, record.files.semantic, record.files.instances):
                    if name:
                        (folder / name).write_bytes(self.store.get(keys.sample_key(job_id, index, shard_size, name)))
            except (ObjectNotFound, KeyError):
                raise SpecError(f"{field}: sample {index} of the dataset version (job {job_id}) is missing from the "
                                "object store; was the job deleted?", field=field) from None
            (folder / layout.RECORD_FILE).write_bytes(record_bytes)  # last: the sample is complete

        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="dsgen-dataset") as pool:
            list(pool.map(one, range(num_images)))
