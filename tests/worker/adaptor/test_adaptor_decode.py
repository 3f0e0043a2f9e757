"""Box decoding against known boxes: targets encoded by the loss decode back to the same
boxes (asymmetric boxes off the diagonal, so swapped x/y or w/h cannot pass)."""
import torch

from worker.adaptor.loss import make_targets
from worker.adaptor.model import decode

STRIDE = 4
BOXES = torch.tensor([[2.0, 17.0, 10.0, 6.0],    # x, y, w, h: wide, low on the left
                      [20.0, 3.0, 5.0, 12.0]])  # tall, high on the right
LABELS = torch.tensor([1, 0])


def _logits_from_targets(t):
    # A perfect head: very confident exactly at the centre cells, nothing elsewhere.
    heat = torch.where(t.heat >= 1.0, torch.tensor(8.0), torch.tensor(-8.0))
    return heat, t.box


def test_decode_inverts_the_training_targets():
    t = make_targets([BOXES], [LABELS], num_outputs=2, grid_hw=(8, 8), out_stride=STRIDE)
    heat, box = _logits_from_targets(t)
    (det,) = decode(heat, box, STRIDE, (32, 32), score_threshold=0.5, nms_iou=0.5)
    assert len(det) == 2
    got = {int(lb): bx.tolist() for bx, lb in zip(det.boxes, det.labels)}
    for (x, y, w, h), lb in zip(BOXES.tolist(), LABELS.tolist()):
        expect = [x, y, x + w, y + h]
        assert torch.allclose(torch.tensor(got[lb]), torch.tensor(expect), atol=1e-3), (lb, got[lb], expect)


def test_decode_clamps_to_the_image_and_respects_the_threshold():
    t = make_targets([torch.tensor([[26.0, 1.0, 12.0, 4.0]])], [torch.tensor([0])], 1, (8, 8), STRIDE)
    heat, box = _logits_from_targets(t)
    (det,) = decode(heat, box, STRIDE, (32, 32), score_threshold=0.5, nms_iou=0.5)
    x0, y0, x1, y1 = det.boxes[0].tolist()
    assert x1 == 32 and abs(y0 - 1) < 1e-3 and abs(y1 - 5) < 1e-3  # clamped on x only
    (none,) = decode(heat - 20, box, STRIDE, (32, 32), score_threshold=0.5, nms_iou=0.5)
    assert len(none) == 0
