"""A small semantic segmenter in plain torch, trained on real labelled data (FreeMask's filter).

PyPI's torchvision (hence segmentation_models_pytorch and timm) does not import beside the
pinned CPU torch here, so the network is written out: a three-level U-Net of 3x3 convs with
GroupNorm and SiLU. `dsgen segmenter train` fits it on a real source (any `SourceSpec`
layout with images) and stores, next to the weights, FreeMask's class-wise mean loss on that
real data: `class_mean_loss[c]` = summed per-pixel cross-entropy over pixels of class c /
their count (background is class 0; ignore pixels are left out). Beside it, the quantiles of
that per-pixel loss per class (`class_loss_quantiles[c]["0.99"]`: the loss 99 % of the real
pixels of c stay under), for a filter threshold calibrated on real data
(`labels.filter.reference: real_quantile`). They are read from a per-class histogram of
log-loss filled batch by batch, so no per-pixel array of the real set is ever held.

Folder: `segmenter.pt` (state dict) + `segmenter.json` (classes, image size, width, class
mean loss, class loss quantiles, training summary). A user's own segmenter comes as a
TorchScript file (`dsgen segmenter import`): `segmenter.torchscript.pt` + `segmenter.json` with
`"format": "torchscript"`, the statistics measured with that network on the user's real data.
Its contract: RGB float [B, 3, S, S] in [0, 1] at S = image_size -> logits [B, 1 + C, h, w]
(index 0 background, then the classes in order; resized to the input when smaller).
TorchScript is code, so such a folder is loaded only from the local disk, never from an upload.
"""
from __future__ import annotations

import functools
import json
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from torch import nn

from shared.formats.records import IGNORE
from shared.formats.spec import FILTER_QUANTILE_LEVELS, SpecError

WEIGHTS = "segmenter.pt"
META = "segmenter.json"
TORCHSCRIPT = "segmenter.torchscript.pt"
# log10(loss) histogram edges: 0.005 decades wide (a quantile is off by at most 1.2 %), from
# 1e-9 (a confidently right pixel; lower losses land in the first bin) to 1e3
_LOG_EDGES = np.linspace(-9.0, 3.0, 2401)


def quantile_key(level: float) -> str:
    """The JSON key of a quantile level ("0.99")."""
    return f"{level:g}"


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
    )


class SmallUNet(nn.Module):
    """images [B, 3, H, W] in [0, 1] (H, W multiples of 4) -> logits [B, num_classes, H, W]."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.head(d1)


@dataclass
class Segmenter:
    net: nn.Module  # SmallUNet, or a user's TorchScript module
    classes: list[str]  # index k+1 = classes[k]; 0 = background
    image_size: int
    class_mean_loss: dict[str, float]  # "background" and every class seen in the real data
    # class -> {quantile_key(level): loss}; empty for folders written before quantiles were stored
    class_loss_quantiles: dict[str, dict[str, float]] = field(default_factory=dict)

    def class_loss_by_id(self, job_classes: Sequence[str]) -> dict[int, float]:
        """The mean losses keyed by the *job's* category ids (0 = background)."""
        out = {0: self.class_mean_loss["background"]} if "background" in self.class_mean_loss else {}
        for i, name in enumerate(job_classes):
            if name in self.class_mean_loss:
                out[i + 1] = self.class_mean_loss[name]
        return out

    def job_index(self, job_classes: Sequence[str]) -> np.ndarray:
        """LUT job category id -> segmenter class index (-1: a class the segmenter does not know)."""
        lut = np.full(256, -1, dtype=np.int64)
        lut[0] = 0
        for i, name in enumerate(job_classes):
            if name in self.classes:
                lut[i + 1] = self.classes.index(name) + 1
        return lut

    @torch.no_grad()
    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, K, H, W] at the images' own size (all the same size)."""
        w, h = images[0].size
        return self.forward(torch.stack([to_tensor(im, self.image_size) for im in images]), (h, w))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The network on [B, 3, S, S] in [0, 1]; logits resized to `size` (default: the input's)."""
        out = self.net(x)
        size = size or tuple(x.shape[-2:])
        if tuple(out.shape[-2:]) != tuple(size):
            out = torch.nn.functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[B, H, W] segmenter class indexes (0 background)."""
        return self.logits(images).argmax(1).numpy()

    def save(self, folder: Path, extra: dict | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"classes": self.classes, "image_size": self.image_size, "class_mean_loss": self.class_mean_loss,
                "class_loss_quantiles": self.class_loss_quantiles}
        if isinstance(self.net, torch.jit.ScriptModule):
            torch.jit.save(self.net, str(folder / TORCHSCRIPT))
            meta["format"] = "torchscript"
        else:
            torch.save(self.net.state_dict(), folder / WEIGHTS)
            meta["width"] = self.net.head.in_channels
        (folder / META).write_text(json.dumps({**meta, **(extra or {})}, indent=1) + "\n")


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    im = image.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


@functools.lru_cache(maxsize=4)
def load_segmenter(path: str, field: str = "labels.filter.segmenter", trusted: bool = True) -> Segmenter:
    """A segmenter folder. `trusted`: from the local disk (a TorchScript segmenter, which is code,
    is refused otherwise, i.e. from an upload)."""
    folder = Path(path)
    if not (folder / META).is_file():
        raise SpecError(f"{field}: not a segmenter folder (no {META}); make one with `dsgen segmenter train` "
                        "(or `dsgen segmenter import` for your own TorchScript segmenter)", field=field)
    # a folder may come from an upload: say what is wrong with it, never a traceback or a server path
    try:
        meta = SegmenterMeta.model_validate_json((folder / META).read_bytes())
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "the file"
        raise SpecError(f"{field}: {META} is not one `dsgen segmenter train` writes ({loc}: {first['msg']})",
                        field=field) from None
    if meta.format == "torchscript":
        if not trusted:
            raise SpecError(f"{field}: a TorchScript segmenter is code and is not run from an upload; train one on "
                            "your real data with `dsgen segmenter train` and upload that folder", field=field)
        net = _load_torchscript(folder / TORCHSCRIPT, field)
    else:
        net = SmallUNet(len(meta.classes) + 1, meta.width)
        try:
            net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError):
            raise SpecError(f"{field}: {WEIGHTS} is missing, not readable or does not match {META} (its classes and "
                            "width); make the folder again with `dsgen segmenter train`", field=field) from None
    return Segmenter(net.eval(), list(meta.classes), meta.image_size, dict(meta.class_mean_loss),
                     {c: dict(q) for c, q in meta.class_loss_quantiles.items()})


def _load_torchscript(file: Path, field: str) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, OSError, ValueError):
        raise SpecError(f"{field}: {file.name} is missing or not a TorchScript file (torch.jit.save writes one)",
                        field=field) from None


def import_segmenter(file: Path, classes: list[str], image_size: int, items: Sequence[tuple[Image.Image, np.ndarray]],
                     field: str = "--torchscript") -> Segmenter:
    """A user's TorchScript segmenter with FreeMask's statistics measured on their real `items`."""
    net = _load_torchscript(file, field).eval()
    seg = Segmenter(net, list(classes), image_size, {})
    images, labels = _load_real(items, image_size)
    try:
        with torch.no_grad():
            out = seg.forward(images[:1])
    except (RuntimeError, TypeError, ValueError) as err:
        raise SpecError(f"{field}: the network fails on a [1, 3, {image_size}, {image_size}] image in [0, 1] "
                        f"({type(err).__name__}); see the contract in docs/methods.md", field=field) from None
    if out.ndim != 4 or out.shape[1] != len(classes) + 1:
        raise SpecError(f"{field}: the network returns {tuple(out.shape)}; expected logits [B, {len(classes) + 1}, H, W] "
                        f"(background + {len(classes)} classes)", field=field)
    seg.class_mean_loss, seg.class_loss_quantiles = real_loss_statistics(seg, images, labels)
    return seg


class SegmenterMeta(BaseModel):
    """segmenter.json as `Segmenter.save` writes it (extra keys, e.g. the training summary, allowed)."""

    format: Literal["dsgen", "torchscript"] = "dsgen"
    classes: list[str] = Field(min_length=1)
    image_size: int = Field(ge=4, le=4096, multiple_of=4)
    width: int = Field(default=32, ge=1, le=1024)
    class_mean_loss: dict[str, float]
    class_loss_quantiles: dict[str, dict[str, float]] = Field(default_factory=dict)


def pixel_loss(logits: torch.Tensor, target: np.ndarray) -> np.ndarray:
    """Per-pixel cross-entropy [B, H, W] (0 where the target is ignore or unknown, i.e. < 0 or 255)."""
    t = torch.from_numpy(target.astype(np.int64))
    valid = (t >= 0) & (t != IGNORE)
    loss = torch.nn.functional.cross_entropy(logits, t.clamp(0, logits.shape[1] - 1), reduction="none")
    return (loss * valid).numpy()


def _load_real(items, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for image, semantic in items:
        xs.append(to_tensor(image, size))
        lab = Image.fromarray(semantic.astype(np.uint8), mode="L")
        if lab.size != (size, size):
            lab = lab.resize((size, size), Image.NEAREST)
        ys.append(torch.from_numpy(np.asarray(lab, dtype=np.int64)))
    return torch.stack(xs), torch.stack(ys)


def real_loss_statistics(seg: Segmenter, images: torch.Tensor, labels: torch.Tensor,
                         batch: int = 64) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """FreeMask's class mean loss (summed pixel CE over the real set / its pixel count) and, per
    class, the FILTER_QUANTILE_LEVELS of that per-pixel loss, both from one pass over the real data."""
    k = len(seg.classes) + 1
    sums, counts = np.zeros(k), np.zeros(k)
    hist = np.zeros((k, len(_LOG_EDGES) + 1), dtype=np.int64)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = seg.forward(images[i:i + batch])
            y = labels[i:i + batch]
            loss = torch.nn.functional.cross_entropy(out, y.clamp(0, k - 1), reduction="none")
            pixel = loss.numpy()
            bins = np.searchsorted(_LOG_EDGES, np.log10(np.maximum(pixel, 1e-12)))
            for c in range(k):
                m = (y == c).numpy()
                sums[c] += float(pixel[m].sum())
                counts[c] += int(m.sum())
                hist[c] += np.bincount(bins[m], minlength=hist.shape[1])
    names = ["background", *seg.classes]
    means = {names[c]: float(sums[c] / counts[c]) for c in range(k) if counts[c] > 0}
    quantiles = {}
    for c in range(k):
        if counts[c] == 0:
            continue
        cum = np.cumsum(hist[c]) / counts[c]
        # upper edge of the bin where the cumulative share reaches the level: the threshold errs
        # towards keeping a pixel
        upper = np.append(_LOG_EDGES, _LOG_EDGES[-1])
        quantiles[names[c]] = {quantile_key(q): float(10 ** upper[int(np.searchsorted(cum, q - 1e-12))])
                               for q in FILTER_QUANTILE_LEVELS}
    return means, quantiles


def calibration_holdout(items: Sequence, share: float, seed: int) -> tuple[list, list]:
    """(training, held out): `share` of the items (at least one when share > 0 and there are two)
    held out, chosen by the seed."""
    n_held = min(len(items) - 1, max(1, round(share * len(items)))) if share > 0 and len(items) >= 2 else 0
    order = np.random.default_rng(seed).permutation(len(items))
    held = set(order[:n_held].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def train_segmenter(
    items: Sequence[tuple[Image.Image, np.ndarray]],
    classes: list[str],
    *,
    image_size: int,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 32,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    calibration: Sequence[tuple[Image.Image, np.ndarray]] = (),
) -> tuple[Segmenter, dict]:
    """Fit the segmenter on (image, semantic map in 0..C / 255) pairs; returns it and a summary.

    The class mean loss is FreeMask's, on the training pairs. The loss quantiles come from the
    `calibration` pairs when given (real data the segmenter has not fitted, whose tail is what a
    correct synthetic pixel's loss looks like), else from the training pairs."""
    if image_size % 4:
        raise ValueError("image_size must be a multiple of 4")
    torch.manual_seed(seed)
    images, labels = _load_real(items, image_size)
    net = SmallUNet(len(classes) + 1, width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * max(1, (len(images) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    g = torch.Generator().manual_seed(seed)
    started, step, last = time.perf_counter(), 0, float("nan")
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = order[i:i + batch_size]
            x, y = images[idx], labels[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = torch.nn.functional.cross_entropy(net(x), y, ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last = float(loss.detach())
        if progress is not None:
            progress(epoch + 1, epochs, last)
    net.eval()
    seg = Segmenter(net, list(classes), image_size, {})
    seg.class_mean_loss, seg.class_loss_quantiles = real_loss_statistics(seg, images, labels)
    if calibration:  # a class the held-out images lack keeps its training-data quantiles
        _, held = real_loss_statistics(seg, *_load_real(calibration, image_size))
        seg.class_loss_quantiles = {**seg.class_loss_quantiles, **held}
    summary = {"epochs": epochs, "images": len(images), "final_loss": last, "seconds": round(time.perf_counter() - started, 1),
               "quantiles_from": f"{len(calibration)} held-out images" if calibration else "the training images"}
    return seg, summary
