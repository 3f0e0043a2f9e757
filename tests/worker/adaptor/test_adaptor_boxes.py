"""Matching adaptor boxes to attention instances (labels.boxes: both)."""
from shared.formats.records import RLE, Annotation
from worker.adaptor.boxes import Box, adaptor_annotations, match_boxes


def att(i, cat, bbox):
    return Annotation(instance_id=i, category="cat" if cat == 1 else "dog", category_id=cat, bbox=bbox, area=1.0,
                      rle=RLE(size=(32, 32), counts="x"), score=0.5)


def test_best_iou_same_class_pairs_merge_and_the_rest_stay():
    attention = [att(1, 1, (0, 0, 10, 10)), att(2, 2, (20, 20, 8, 8)), att(3, 1, (1, 1, 10, 10))]
    boxes = [Box((1, 1, 11, 11), 0.9, 1, "cat"),   # best: instance 3 (IoU 1.0)
             Box((0, 0, 10, 10), 0.8, 2, "dog"),   # overlaps 1 but other class: unmatched
             Box((20, 20, 28, 29), 0.7, 2, "dog")]  # instance 2
    out, matched = match_boxes(attention, boxes, 0.5)
    assert matched == 2
    by_id = {a.instance_id: a for a in out}
    assert by_id[3].source == "adaptor" and by_id[3].bbox == (1, 1, 10, 10) and by_id[3].score == 0.9 and by_id[3].rle
    assert by_id[2].source == "adaptor" and by_id[2].bbox == (20, 20, 8, 9)
    assert by_id[1].source == "attention" and by_id[1].bbox == (0, 0, 10, 10)
    extra = by_id[4]  # the unmatched adaptor box, after the attention ids
    assert extra.source == "adaptor" and extra.rle is None and extra.category == "dog"


def test_below_match_iou_nothing_merges_and_unknown_classes_are_not_annotated():
    attention = [att(1, 1, (0, 0, 10, 10))]
    out, matched = match_boxes(attention, [Box((8, 8, 18, 18), 0.9, 1, "cat")], 0.5)
    assert matched == 0 and [a.source for a in out] == ["attention", "adaptor"]
    out, matched = match_boxes(attention, [Box((0, 0, 10, 10), 0.9, None, None)], 0.5)
    assert matched == 1 and out[0].category == "cat"  # class-agnostic box takes the instance's class
    assert adaptor_annotations([Box((0, 0, 1, 1), 0.5, None, None), Box((0, 0, 2, 2), 0.6, 1, "cat")])[0].instance_id == 1
