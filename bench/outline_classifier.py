"""A region's shape read from its outline by a classifier trained on real renders' objects.

The per-object reading (bench/object_judge.py) takes an object's shape from the pixel judge's
per-pixel votes, which mislead on generated pictures (drawn crosses get half their pixels read as
triangle), and its `silhouette_objects` fallback fits the renderer's own shapes as templates. This
is the learned version of the second: a small CNN that sees only a region's outline (resampled
around its centroid, scaled by its area, so position and size say nothing) and was trained on the
objects of real renders *as the judge reads them*, so the judge's own blur is part of what it
learned. A reading counts only when the classifier is as sure as it is on 95% of held-out real
objects of that shape (`min_probability`, calibrated on real renders only, never on generated
images): a blob is a circle or nothing, never a cross.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

OUTLINE_SIDE = 24
# The grid spans +-OUTLINE_EXTENT * sqrt(area) around the centroid: the farthest point of any of the
# world's shapes lies within 0.86 * sqrt(area) of its centroid (the triangle), so every outline fits.
OUTLINE_EXTENT = 1.1
CALIBRATION_TURNS = 8


def outline(region: np.ndarray, angle: float = 0.0, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The boolean `region` resampled on an OUTLINE_SIDE x OUTLINE_SIDE grid centred on its
    centroid (moved by `shift` pixels), spanning +-OUTLINE_EXTENT * sqrt(area) * `scale`, rotated by
    `angle`: a float picture of the outline that does not depend on where or how big the object is."""
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean() + shift[0], xs.mean() + shift[1]
    half = OUTLINE_EXTENT * math.sqrt(len(ys)) * scale
    u = np.linspace(-half, half, OUTLINE_SIDE)
    gy, gx = np.meshgrid(u, u, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    return ndimage.map_coordinates(region.astype(np.float32), [c * gy - s * gx + cy, s * gy + c * gx + cx],
                                   order=1, mode="constant").astype(np.float32)


class _Net(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.head(F.relu(self.c3(x)).mean((2, 3)))


class OutlineClassifier:
    """Trained on `regions` (boolean masks of real objects as the judge reads them) of known
    `labels` (shape names, all in `shapes`); a random `held_out` share of them is kept back to
    measure it (`real_accuracy`) and to calibrate each shape's `min_probability` at the `quantile`."""

    def __init__(self, regions: list[np.ndarray], labels: list[str], shapes: tuple[str, ...], steps: int = 600,
                 seed: int = 0, held_out: float = 0.25, quantile: float = 0.05, batch: int = 64):
        self.shapes = tuple(shapes)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        y = np.array([self.shapes.index(s) for s in labels])
        order = rng.permutation(len(regions))
        n_test = int(round(held_out * len(regions)))
        test, train = order[:n_test], order[n_test:]
        self.net = _Net(len(self.shapes))
        opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)
        for _ in range(steps):  # every view a fresh rotation, size and centring error
            idx = rng.choice(train, batch)
            views = np.stack([outline(regions[i], rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.1),
                                      tuple(rng.uniform(-0.5, 0.5, 2))) for i in idx])
            # label smoothing keeps probabilities off 1.0, so the calibrated floor separates sure from unsure
            loss = F.cross_entropy(self.net(torch.from_numpy(views[:, None])), torch.from_numpy(y[idx]), label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.net.eval()
        probs = self.probabilities([regions[i] for i in test])
        self.real_accuracy = float((probs.argmax(1) == y[test]).mean()) if len(test) else float("nan")
        # the floor: each held-out object read at CALIBRATION_TURNS rotations (real objects come at
        # any), so the quantile rests on more than the few held-out objects of each shape
        turns = [outline(regions[i], 2 * math.pi * t / CALIBRATION_TURNS) for i in test for t in range(CALIBRATION_TURNS)]
        turned = self._softmax(np.stack(turns)) if turns else np.zeros((0, len(self.shapes)))
        y_turned = np.repeat(y[test], CALIBRATION_TURNS)
        self.min_probability = {s: float(np.quantile(turned[y_turned == k, k], quantile)) if (y_turned == k).any() else 1.0
                                for k, s in enumerate(self.shapes)}

    @torch.no_grad()
    def _softmax(self, views: np.ndarray) -> np.ndarray:
        return torch.softmax(self.net(torch.from_numpy(views[:, None])), 1).numpy()

    def probabilities(self, regions: list[np.ndarray]) -> np.ndarray:
        """[regions, shapes]: the classifier's probabilities, each region read upright."""
        if not regions:
            return np.zeros((0, len(self.shapes)), np.float32)
        return self._softmax(np.stack([outline(r) for r in regions]))

    def read(self, region: np.ndarray) -> tuple[str, float] | None:
        """(shape, probability) when the classifier is as sure of the region's shape as it is of 95%
        of real objects of that shape, else None (not an object of any shape)."""
        p = self.probabilities([region])[0]
        k = int(p.argmax())
        return (self.shapes[k], float(p[k])) if p[k] >= self.min_probability[self.shapes[k]] else None

    def to_json(self) -> dict:
        return {"real_accuracy": round(self.real_accuracy, 4),
                "min_probability": {k: round(v, 4) for k, v in self.min_probability.items()}}


def outline_objects(pair_map: np.ndarray, colours: tuple[str, ...], shapes: tuple[str, ...],
                    classifier: OutlineClassifier, min_area: dict[str, float]) -> list[tuple[str, str, float]]:
    """(colour, shape, probability) of each region of one judged colour (object_judge.regions_of)
    that `classifier` reads as a shape, not smaller than a fragment of that shape (`min_area`)."""
    from bench import object_judge as oj

    out = []
    for region in oj.regions_of(pair_map, len(shapes)):
        read = classifier.read(region)
        if read is not None and region.sum() >= min_area.get(read[0], math.inf):
            out.append((colours[int(pair_map[region][0] - 1) // len(shapes)], *read))
    return out


def largest_region(pair_map: np.ndarray, n_shapes: int) -> np.ndarray:
    """The judge's largest one-colour region of a one-object picture (its object, as read)."""
    from bench import object_judge as oj

    regions = oj.regions_of(pair_map, n_shapes)
    return max(regions, key=lambda r: r.sum()) if regions else np.zeros_like(pair_map, bool)
