"""Test doubles: an instant deterministic engine and a dispatcher that records what it would send."""
from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
from PIL import Image

from shared.dispatch.tasks import FINALIZE_TASK, GPU_QUEUE, QUEUE_OF, SHARD_TASK


class FakeSample:
    def __init__(self, index: int, seed: int):
        from shared.formats.records import Annotation, ModelInfo, SampleRecord

        rng = np.random.default_rng(seed * 1000 + index)
        self.image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        self.semantic = np.zeros((16, 16), np.uint8)
        self.semantic[2:8, 3:9] = 1
        self.instances = (self.semantic > 0).astype(np.uint16)
        self.record = SampleRecord(
            index=index, seed=seed * 1000 + index, prompt=f"a photo of a cat #{index}", classes=["cat"],
            model=ModelInfo(id="fake"), method="text2image", width=16, height=16,
            annotations=[Annotation(instance_id=1, category="cat", category_id=1, bbox=(3, 2, 6, 6), area=36)],
        )

    def files(self) -> dict[str, bytes]:
        def png(img: Image.Image) -> bytes:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        return {"image.png": png(self.image), "semantic.png": png(Image.fromarray(self.semantic)),
                "instances.png": png(Image.fromarray(self.instances)),
                "record.json": self.record.model_dump_json().encode()}


class FakeEngine:
    """Same interface as `worker.engine.session.EngineSession`, instant and deterministic."""

    calls: list[list[int]] = []

    def __init__(self, spec, uploads=None, datasets=None):
        self.spec = spec
        self.uploads = uploads  # EngineSession's upload fetcher (specs naming uploads)
        self.datasets = datasets  # EngineSession's dataset-version fetcher (specs naming a dataset)

    def generate(self, indexes):
        FakeEngine.calls.append(list(indexes))
        for i in indexes:
            yield FakeSample(i, self.spec.seed)


class RecordingDispatcher:
    """Keeps what would be sent (tests, dry runs)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: BaseException | None = None

    def _record(self, name: str, *args: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((name, args))

    def send_shard(self, job_id: uuid.UUID, shard_index: int) -> None:
        self._record(SHARD_TASK, str(job_id), int(shard_index))

    def send_finalize(self, job_id: uuid.UUID) -> None:
        self._record(FINALIZE_TASK, str(job_id))

    def ping(self) -> None:
        if self.fail is not None:
            raise self.fail

    def queue_depth(self, queue: str = GPU_QUEUE) -> int | None:
        return sum(1 for name, _ in self.sent if QUEUE_OF[name] == queue)

    def workers_alive(self) -> int | None:
        return None
