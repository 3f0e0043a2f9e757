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

from shared.sources import Limits, archive_key, extract_archive
from shared.spec import SpecError
from shared.storage import ObjectNotFound


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
