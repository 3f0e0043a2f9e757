"""The adaptor inside a job: load and check it, run it on a batch's features, annotate samples."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.formats.records import DROPPED, Annotation
from shared.formats.spec import JobSpec, LabelSpec
from worker.adaptor.boxes import Box, adaptor_annotations, match_boxes
from worker.adaptor.io import AdaptorError, check_adaptor_fits, default_adaptor_for, load_adaptor
from worker.adaptor.model import DetectionAdaptor, decode
from worker.engine.loading import LoadedModel


@dataclass
class AdaptorLabeler:
    adaptor: DetectionAdaptor
    labels: LabelSpec
    category: list[tuple[int, str] | None]  # adaptor output k -> (job category id, name), None: not a job class
    ref: str

    @classmethod
    def for_job(cls, spec: JobSpec, model: LoadedModel) -> "AdaptorLabeler":
        labels = spec.labels
        ref = labels.adaptor or default_adaptor_for(model.info.id)
        if ref is None:
            raise AdaptorError(
                f"labels.adaptor: labels.boxes {labels.boxes!r} needs an adaptor (a folder made by "
                f"`dsgen adaptor train`, or builtin:<name>); {model.info.id} ships none"
            )
        adaptor = load_adaptor(ref, model.device)
        check_adaptor_fits(adaptor, model.info, model.unet, where=repr(ref))
        ids = spec.category_ids
        cfg = adaptor.config
        if cfg.class_agnostic:
            if len(spec.classes) == 1:
                category = [(1, spec.classes[0].name)]
            elif labels.boxes == "both":
                category = [None]  # the matched attention instance gives the class
            else:
                raise AdaptorError(
                    f"labels.adaptor: {ref} is class-agnostic; with {len(spec.classes)} job classes use "
                    "labels.boxes 'both' (classes from attention) or a class-aware adaptor"
                )
        else:
            category = [(ids[n], n) if n in ids else None for n in cfg.classes]
            if not any(category):
                raise AdaptorError(
                    f"labels.adaptor: {ref} detects {cfg.classes}, none of the job's classes {list(ids)}"
                )
        return cls(adaptor, labels, category, str(ref))

    @property
    def feature_step(self) -> int:
        return self.adaptor.config.feature_step

    @torch.no_grad()
    def detect(self, features: dict[int, torch.Tensor], image_hw: tuple[int, int]) -> list[list[Box]]:
        """Boxes per image of the batch, above the score threshold, after NMS."""
        heat, box = self.adaptor(features)
        found = decode(heat, box, self.adaptor.config.out_stride, image_hw,
                       self.labels.adaptor_score_threshold, self.labels.adaptor_nms_iou)
        out = []
        for d in found:
            boxes = []
            for xyxy, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
                cat = self.category[label]
                if cat is None and not self.adaptor.config.class_agnostic:
                    continue  # a class the job does not ask for
                boxes.append(Box(tuple(xyxy), float(score), cat[0] if cat else None, cat[1] if cat else None))
            out.append(boxes)
        return out

    def annotate(self, boxes: list[Box], attention: list[Annotation] | None) -> tuple[list[Annotation], dict]:
        """Annotations and quality entries of one sample; quality['dropped'] when it has no box
        and labels.keep_empty is off."""
        if attention is None:
            annotations, matched = adaptor_annotations(boxes), 0
        else:
            annotations, matched = match_boxes(attention, boxes, self.labels.match_iou)
        quality = {"adaptor": {"boxes": len(boxes), "matched": matched,
                               "max_score": round(max((b.score for b in boxes), default=0.0), 4)}}
        if not boxes and not self.labels.keep_empty:
            quality[DROPPED] = f"no adaptor box above labels.adaptor_score_threshold {self.labels.adaptor_score_threshold}"
        return annotations, quality
