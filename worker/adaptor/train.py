"""Adaptor training: frozen UNet features of real images -> CenterNet head, evaluated per epoch.

Seeded and resumable: the epoch's image order and each image's noise are pure functions of
(seed, epoch, image id), and `checkpoint.pt` (written after every epoch, atomically) holds the
head, the optimiser and the schedule, so a resumed run continues exactly where it stopped.
After each epoch the adaptor folder (`adaptor.json` + `adaptor.safetensors`) is rewritten with
the validation AP / AP50 (COCOeval), so `--out` is always a usable adaptor.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from worker.adaptor.backbone import default_generation, last_timestep, noise_seed, real_features
from worker.adaptor.data import CocoItem, CocoSet, load_coco, load_image, scaled_boxes
from worker.adaptor.evaluate import box_ap, detections_to_coco
from worker.adaptor.io import CONFIG_FILE, save_adaptor
from worker.adaptor.loss import Targets, detection_loss, make_targets
from worker.adaptor.model import AdaptorConfig, DetectionAdaptor, decode
from worker.engine.features import feature_layout
from worker.engine.generate import size_multiple
from worker.engine.loading import LoadedModel, load_model

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
EVAL_SCORE_THRESHOLD = 0.01  # AP integrates over scores: keep low-score boxes for evaluation
EVAL_NMS_IOU = 0.5


class TrainingError(ValueError):
    pass


@dataclass
class TrainConfig:
    model: str
    coco: str
    images: str
    out: str
    val_coco: str | None = None
    val_images: str | None = None
    val_fraction: float = 0.1  # held out of --coco when no --val-coco is given
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    timestep: int | None = None  # None: the last step of the model's default generation
    width: int = 64
    head_convs: int = 2
    class_agnostic: bool = False
    size: tuple[int, int] | None = None  # (H, W); None: the model's default generation size
    cache_features: bool = False  # one noise draw per image, features kept in memory (fp16)
    caption: str = "auto"
    feature_batch: int = 32
    max_minutes: float | None = None
    threads: int | None = None


@dataclass
class EpochResult:
    epoch: int
    loss: float
    metrics: dict
    seconds: float


@dataclass
class Trainer:
    cfg: TrainConfig
    model: LoadedModel | None = None
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.model = self.model or load_model(self.cfg.model)
        m = self.model
        gen = default_generation(m)
        self.size = tuple(self.cfg.size) if self.cfg.size else (int(gen.get("height", 512)), int(gen.get("width", 512)))
        mult = size_multiple(m)
        if self.size[0] % mult or self.size[1] % mult:
            raise TrainingError(f"--size {self.size[1]}x{self.size[0]}: sides must be multiples of {mult} for {m.info.id}")
        self.timestep = self.cfg.timestep if self.cfg.timestep is not None else last_timestep(m)
        train = load_coco(self.cfg.coco, self.cfg.images, caption=self.cfg.caption)
        self.classes = ["object"] if self.cfg.class_agnostic else train.classes
        if self.cfg.val_coco:
            val = load_coco(self.cfg.val_coco, self.cfg.val_images or self.cfg.images, classes=train.classes,
                            caption=self.cfg.caption)
            self.train_items, self.val_items = train.items, val.items
        else:
            self.train_items, self.val_items = self._split(train)
        if not self.val_items:
            raise TrainingError("no validation images: pass --val-coco or a --val-fraction > 0")
        blocks = feature_layout(m.unet)
        self.adaptor_config = AdaptorConfig(
            base_model={"id": m.info.id, "revision": m.info.revision},
            blocks=[asdict(b) for b in blocks],
            timestep=int(self.timestep),
            classes=self.classes,
            class_agnostic=self.cfg.class_agnostic,
            pixel_stride=m.vae_scale,
            width=self.cfg.width,
            head_convs=self.cfg.head_convs,
            image_size=list(self.size),
        )
        torch.manual_seed(self.cfg.seed)
        self.adaptor = DetectionAdaptor(self.adaptor_config).to(m.device)
        self.opt = torch.optim.AdamW(self.adaptor.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_items) / self.cfg.batch_size)
        total = self.cfg.epochs * self.steps_per_epoch
        warm = min(50, max(1, total // 10))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        self.epoch = 0
        self._cache: dict[str, dict[int, torch.Tensor]] = {}
        self._target_cache: dict[int, Targets] = {}

    # ------------------------------------------------------------------ data

    def _split(self, data: CocoSet) -> tuple[list[CocoItem], list[CocoItem]]:
        n = len(data.items)
        n_val = int(round(n * self.cfg.val_fraction))
        order = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, 0x5917])).permutation(n)
        val = set(order[:n_val].tolist())
        return [it for i, it in enumerate(data.items) if i not in val], [data.items[i] for i in sorted(val)]

    def _labels(self, item: CocoItem) -> torch.Tensor:
        return torch.zeros(len(item.labels), dtype=torch.long) if self.cfg.class_agnostic else torch.from_numpy(item.labels)

    def features(self, items: list[CocoItem], epoch: int) -> dict[int, torch.Tensor]:
        images = torch.stack([load_image(it, self.size) for it in items])
        seeds = [noise_seed(self.cfg.seed, it.image_id, epoch) for it in items]
        return real_features(self.model, images, [it.caption for it in items], self.timestep, seeds)

    def _cached(self, name: str, items: list[CocoItem], on_progress=None) -> dict[int, torch.Tensor]:
        """Features of `items` from one fixed noise draw each, kept in memory as fp16."""
        if name not in self._cache:
            parts: dict[int, list[torch.Tensor]] = {}
            for b0 in range(0, len(items), self.cfg.feature_batch):
                for s, f in self.features(items[b0:b0 + self.cfg.feature_batch], epoch=0).items():
                    parts.setdefault(s, []).append(f.to("cpu", torch.float16))
                if on_progress is not None:
                    on_progress(name, min(b0 + self.cfg.feature_batch, len(items)), len(items))
            self._cache[name] = {s: torch.cat(v) for s, v in parts.items()}
        return self._cache[name]

    def _batch_features(self, name, items, idx, epoch, on_progress=None) -> dict[int, torch.Tensor]:
        if self.cfg.cache_features:
            cache = self._cached(name, items, on_progress)
            sel = torch.as_tensor(idx)
            return {s: f[sel].to(self.model.device, torch.float32) for s, f in cache.items()}
        return self.features([items[i] for i in idx], epoch)

    def _targets(self, items: list[CocoItem], grid_hw: tuple[int, int]) -> Targets:
        """Targets of a batch, from per-image targets computed once (no augmentation)."""
        for it in items:
            if it.image_id not in self._target_cache:
                self._target_cache[it.image_id] = make_targets(
                    [torch.from_numpy(scaled_boxes(it, self.size))], [self._labels(it)],
                    self.adaptor_config.num_outputs, grid_hw, self.adaptor_config.out_stride)
        parts = [self._target_cache[it.image_id] for it in items]
        return Targets(torch.cat([t.heat for t in parts]), torch.cat([t.box for t in parts]),
                       torch.cat([t.mask for t in parts]), sum(t.num_objects for t in parts))

    # ------------------------------------------------------------------ loop

    def train_epoch(self, on_batch: Callable[[int, int, float], None] | None = None, on_progress=None) -> float:
        self.adaptor.train()
        epoch = self.epoch
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_items), generator=g).tolist()
        losses = []
        for k in range(self.steps_per_epoch):
            idx = order[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
            feats = self._batch_features("train", self.train_items, idx, epoch + 1, on_progress)
            heat, box = self.adaptor(feats)
            targets = self._targets([self.train_items[i] for i in idx], tuple(heat.shape[-2:]))
            loss, _parts = detection_loss(heat, box, targets)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.adaptor.parameters(), 5.0)
            self.opt.step()
            self.sched.step()
            losses.append(float(loss.detach()))
            if on_batch is not None:
                on_batch(k + 1, self.steps_per_epoch, float(np.mean(losses[-20:])))
        return float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, on_progress=None) -> dict:
        self.adaptor.eval()
        items = self.val_items
        dets = []
        for b0 in range(0, len(items), self.cfg.feature_batch):
            idx = list(range(b0, min(b0 + self.cfg.feature_batch, len(items))))
            feats = self._batch_features("val", items, idx, 0, on_progress)
            heat, box = self.adaptor(feats)
            found = decode(heat, box, self.adaptor_config.out_stride, self.size, EVAL_SCORE_THRESHOLD, EVAL_NMS_IOU)
            for i, d in zip(idx, found):
                it = items[i]
                dets += detections_to_coco(it.image_id, d, list(range(1, len(self.classes) + 1)),
                                           (it.width / self.size[1], it.height / self.size[0]))
        return box_ap(gt_document(items, self.classes, self.cfg.class_agnostic), dets, self.cfg.class_agnostic)

    def run(self, on_batch=None, on_epoch: Callable[[EpochResult], None] | None = None, on_progress=None,
            stop_after: int | None = None) -> list[dict]:
        """Train to `cfg.epochs` (or `stop_after` more epochs, or past `cfg.max_minutes`)."""
        started = time.perf_counter()
        last = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, self.epoch + stop_after)
        while self.epoch < last:
            t0 = time.perf_counter()
            loss = self.train_epoch(on_batch, on_progress)
            metrics = self.evaluate(on_progress)
            self.epoch += 1
            result = EpochResult(self.epoch, loss, metrics, time.perf_counter() - t0)
            self.history.append({"epoch": self.epoch, "loss": round(loss, 5), **metrics, "seconds": round(result.seconds, 1)})
            self.save()
            if on_epoch is not None:
                on_epoch(result)
            if self.cfg.max_minutes and (time.perf_counter() - started) / 60 > self.cfg.max_minutes:
                break
        return self.history

    # ------------------------------------------------------------------ persistence

    def save(self) -> None:
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        self.adaptor_config.training = {
            "data": {"coco": str(self.cfg.coco), "n_train": len(self.train_items), "n_val": len(self.val_items),
                     "caption_sources": sorted({it.caption_source for it in self.train_items})},
            "epochs": self.epoch, "seed": self.cfg.seed, "lr": self.cfg.lr, "batch_size": self.cfg.batch_size,
            "cache_features": self.cfg.cache_features,
            "seconds": round(sum(h["seconds"] for h in self.history), 1),
            "val": self.history[-1] if self.history else {},
        }
        save_adaptor(self.adaptor, out)
        state = {
            "epoch": self.epoch, "adaptor": self.adaptor.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "history": self.history, "train_config": _comparable(self.cfg),
        }
        tmp = out / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out / CHECKPOINT)
        with (out / LOG).open("a") as fh:
            fh.write(json.dumps(self.history[-1]) + "\n")

    def resume(self) -> bool:
        path = Path(self.cfg.out) / CHECKPOINT
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.model.device, weights_only=False)
        if state["train_config"] != _comparable(self.cfg):
            diff = sorted(k for k in state["train_config"] if state["train_config"][k] != _comparable(self.cfg).get(k))
            raise TrainingError(f"--resume: {path} was made with different settings ({', '.join(diff)}); use another --out")
        self.adaptor.load_state_dict(state["adaptor"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch, self.history = state["epoch"], state["history"]
        return True


def _comparable(cfg: TrainConfig) -> dict:
    """Settings a resumed run must share (not the run length, time limit or threads)."""
    d = asdict(cfg)
    for k in ("epochs", "max_minutes", "threads", "out"):
        d.pop(k)
    d["size"] = list(d["size"]) if d["size"] else None
    return d


def gt_document(items: list[CocoItem], classes: list[str], class_agnostic: bool = False) -> dict:
    """COCO ground truth of `items` at their file size, category ids = class index + 1."""
    anns = []
    for it in items:
        for box, label in zip(it.boxes.tolist(), it.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": it.image_id, "category_id": 1 if class_agnostic else label + 1,
                         "bbox": box, "area": float(box[2] * box[3]), "iscrowd": 0})
    return {"images": [{"id": it.image_id, "width": it.width, "height": it.height, "file_name": it.path.name} for it in items],
            "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}


def check_out_folder(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        what = "an adaptor" if (out / CONFIG_FILE).exists() else "files"
        raise TrainingError(f"--out {out} already holds {what}; pass --resume to continue or --overwrite to replace it")
