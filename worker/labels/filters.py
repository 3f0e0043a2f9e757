"""Filters: a stage after labelling, for every method, on each aligned batch of samples.

- Segmenter filter (FreeMask, `labels.filter.segmenter`): a segmenter trained on real data
  scores the synthetic image against its label; a pixel of class c becomes 255 (ignore) when
  its cross-entropy exceeds `tolerance` x the class's mean loss on real data (FreeMask), or,
  with `reference: real_quantile`, x the loss that `quantile` of the class's real pixels stay
  under (so on data as good as real, about 1 - quantile of the pixels go). A sample with
  less than `min_kept` of its labelled pixels left is dropped (`quality.dropped`). With
  `scope: samples` no pixel is changed: only the drop rule applies (the kept fraction counts the
  pixels within tolerance).
- Attention gate (`labels.filter.attention_gate`, attention labels only, no extra model): a
  prompted class with no confident region, a peak attention below `min_peak_ratio` x the
  median peak of the batch's classes, or more fragments (instances) than the prompt mentions
  it, is listed in `quality.attention_gate`; with "drop" the sample is left out of exports.
  The median is taken over the aligned batch (batches are fixed by the batch size), so a
  sample's verdict does not depend on which shard or resume made it.

Filters only ever remove labels (to ignore) or drop samples; images are never changed.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import numpy as np

from shared.formats.records import DROPPED, IGNORE
from shared.formats.spec import JobSpec, SpecError
from shared.sources.archives import UPLOAD_REF
from worker.labels.instances import encode_rle, mask_polygons


def _shrink(record, semantic: np.ndarray, instances: np.ndarray | None):
    """Annotations restricted to the pixels still labelled; empty ones removed."""
    if instances is None:
        return record.annotations, instances
    instances = instances.copy()
    instances[semantic == IGNORE] = 0
    kept = []
    for a in record.annotations:
        mask = instances == a.instance_id
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        kept.append(a.model_copy(update={
            "bbox": (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)),
            "area": float(mask.sum()), "rle": encode_rle(mask), "polygons": mask_polygons(mask),
        }))
    return kept, instances


def _with_quality(sample, **quality):
    sample.record = sample.record.model_copy(update={"quality": {**sample.record.quality, **quality}})
    return sample


class SegmenterFilter:
    def __init__(self, spec: JobSpec, folder: str, trusted: bool = True):
        from worker.labels.segmenter import load_segmenter

        opts = spec.labels.filter
        self.seg = load_segmenter(folder, trusted=trusted)
        self.min_kept, self.scope = opts.min_kept, opts.scope
        names = [c.name for c in spec.classes]
        self.lut = self.seg.job_index(names)
        self.tolerance, reference = self._reference(opts)
        self.threshold = np.array([np.inf if v is None else v * self.tolerance for v in reference])

    def _reference(self, opts) -> tuple[float, list[float | None]]:
        """The tolerance, and per segmenter class (background first) the real loss it multiplies."""
        from worker.labels.segmenter import quantile_key

        seg_names = ["background", *self.seg.classes]
        if opts.reference == "class_mean":
            return (1.25 if opts.tolerance is None else opts.tolerance), [self.seg.class_mean_loss.get(n) for n in seg_names]
        if not self.seg.class_loss_quantiles:
            raise SpecError("labels.filter.reference: the segmenter (labels.filter.segmenter) stores no real loss "
                            "quantiles (it was trained before they were); retrain it with `dsgen segmenter train`, or use "
                            "reference: class_mean", field="labels.filter.reference")
        key = quantile_key(opts.quantile)
        return (1.0 if opts.tolerance is None else opts.tolerance), [self.seg.class_loss_quantiles.get(n, {}).get(key)
                                                                     for n in seg_names]

    def __call__(self, samples: list) -> list:
        from worker.labels.segmenter import pixel_loss

        todo = [s for s in samples if s.semantic is not None and not s.record.quality.get(DROPPED)]
        if not todo:
            return samples
        logits = self.seg.logits([s.image for s in todo])
        for s, lg in zip(todo, logits):
            target = self.lut[s.semantic.astype(np.int64)]
            target[s.semantic == IGNORE] = IGNORE
            loss = pixel_loss(lg[None], target[None])[0]
            labelled = (target >= 0) & (target != IGNORE)
            limit = self.threshold[np.clip(target, 0, len(self.threshold) - 1)]
            bad = labelled & (loss > limit)
            before, after = int(labelled.sum()), int((labelled & ~bad).sum())
            kept = after / before if before else 1.0
            ignored = 0.0
            if self.scope == "pixels":
                semantic = s.semantic.copy()
                semantic[bad] = IGNORE
                annotations, instances = _shrink(s.record, semantic, s.instances)
                s.semantic, s.instances = semantic, instances
                s.record = s.record.model_copy(update={"annotations": annotations})
                ignored = float(bad.sum()) / bad.size
            quality = {"segmenter_filter": {"ignored_fraction": round(ignored, 6), "kept": round(kept, 6),
                                            "scope": self.scope}}
            if kept < self.min_kept:
                quality[DROPPED] = f"segmenter filter kept {kept:.2f} of the labelled pixels (< labels.filter.min_kept {self.min_kept})"
            _with_quality(s, **quality)
        return samples


class AttentionGate:
    def __init__(self, spec: JobSpec, plans: Callable[[int], object]):
        self.action = spec.labels.filter.attention_gate
        self.ratio = spec.labels.filter.min_peak_ratio
        self.plans = plans

    def __call__(self, samples: list) -> list:
        peaks = [p for s in samples for p in (s.record.quality.get("peak_attention") or {}).values()]
        median = statistics.median(peaks) if peaks else 0.0
        for s in samples:
            q = s.record.quality
            if "peak_attention" not in q or q.get(DROPPED):
                continue
            mentions = {m.name: len(m.spans) for m in self.plans(s.record.index).mentions}
            fragments: dict[str, int] = {}
            for a in s.record.annotations:
                fragments[a.category] = fragments.get(a.category, 0) + 1
            failed = []
            for name in s.record.classes:
                if q.get("class_pixel_fraction", {}).get(name, 0.0) == 0.0:
                    failed.append({"class": name, "reason": "no confident region"})
                elif q["peak_attention"].get(name, 0.0) < self.ratio * median:
                    failed.append({"class": name, "reason": f"peak attention below {self.ratio} x the batch median"})
                elif fragments.get(name, 0) > mentions.get(name, 1):
                    failed.append({"class": name, "reason": f"{fragments[name]} fragments for {mentions.get(name, 1)} mention(s)"})
            if not failed:
                continue
            update = {"attention_gate": failed}
            if self.action == "drop":
                update[DROPPED] = "attention gate: " + "; ".join(f"{f['class']}: {f['reason']}" for f in failed)
            _with_quality(s, **update)
        return samples


@dataclasses.dataclass
class FilterChain:
    stages: list

    def __call__(self, samples: list) -> list:
        for stage in self.stages:
            samples = stage(samples)
        return samples


def build_filters(spec: JobSpec, session) -> FilterChain:
    """The filters the spec asks for, in order: the attention gate, then the segmenter."""
    stages: list = []
    if spec.labels.filter.attention_gate != "off" and spec.labels.mode != "none" and spec.method != "mask2image":
        stages.append(AttentionGate(spec, session.plan))
    if spec.labels.filter.segmenter:
        ref = spec.labels.filter.segmenter
        stages.append(SegmenterFilter(spec, session.resolve_folder(ref, "labels.filter.segmenter"),
                                      trusted=not ref.startswith(UPLOAD_REF)))
    return FilterChain(stages)
