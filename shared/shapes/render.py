"""Procedural renderer of the shapes world with exact ground truth (numpy + PIL only).

`render_scene(seed, size, world=...)` draws 1-3 objects (shape x colour, random size, position
and rotation, partial overlap allowed) on the world's background (flat, a mild gradient, or
v1's low-contrast texture), anti-aliased by supersampling. `objects=[(colour, shape), ...]`
forces what is drawn (held-out concepts included). Ground truth is the *visible* part of each object: an instance mask, its
box, the semantic mask (class = shape), the colour, and the caption naming every object.
The same seed always gives the same scene, byte for byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from shared.shapes.world import DEFAULT_WORLD, MAX_OBJECTS, PALETTE, World, category_id, get_world, make_caption

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    instance_id: int  # value in Scene.instances (1..n, in drawing order)
    box: tuple[int, int, int, int]  # x, y, w, h of the visible mask, pixels (COCO xywh)
    area: int  # visible pixels
    center: tuple[float, float]  # x, y, pixels
    extent: float  # nominal size, pixels

    @property
    def category_id(self) -> int:
        return category_id(self.shape)


@dataclass
class Scene:
    seed: int
    image: np.ndarray  # H x W x 3 uint8
    semantic: np.ndarray  # H x W uint8, 0 = background, else category id of the shape
    instances: np.ndarray  # H x W uint8, 0 = background, else ShapeObject.instance_id
    objects: list[ShapeObject] = field(default_factory=list)
    caption: str = ""

    def instance_mask(self, obj: ShapeObject) -> np.ndarray:
        return self.instances == obj.instance_id

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.image, mode="RGB")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([0x5AA9E5, int(seed)]))


def _background(rng: np.random.Generator, size: int, kind: str = "texture") -> np.ndarray:
    """Grey-ish base colour; `texture` adds smooth low-frequency blotches and fine grain (low
    contrast), `gradient` a mild linear ramp, `flat` nothing."""
    base = rng.uniform(0.35, 0.7) + rng.uniform(-0.04, 0.04, size=3)
    if kind == "flat":
        return np.broadcast_to(base[None, None, :], (size, size, 3)).clip(0, 1).astype(np.float64)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.03, 0.08)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
        ramp = amp * (np.cos(angle) * xx + np.sin(angle) * yy)
        return (base[None, None, :] + ramp[..., None]).clip(0, 1)
    coarse = rng.normal(0.0, 1.0, size=(4, 4, 3)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(((coarse * 0.25 + 0.5).clip(0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
        dtype=np.float32,
    ) / 255.0 - 0.5
    grain = rng.normal(0.0, 1.0, size=(size, size, 1))
    img = base[None, None, :] + rng.uniform(0.04, 0.1) * smooth.mean(axis=2, keepdims=True) + 0.015 * grain
    return img.clip(0, 1)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
        scale = r * 0.85  # a square of the same nominal extent looks as big as the circle
    elif shape == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
        scale = r * 1.1
    elif shape == "cross":
        # A plus sign: 12 corners around the centre.
        a, b = 1.0, 0.34
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in corners]
        scale = r * 0.95
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        scale = r * 1.1
    else:
        raise ValueError(shape)
    return [(cx + scale * x, cy + scale * y) for x, y in pts]


def shape_coverage(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Fraction of each pixel the shape covers (0..1), by drawing at SUPERSAMPLE x and box-averaging."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    hi = np.asarray(canvas, dtype=np.float32) / 255.0
    return hi.reshape(size, s, size, s).mean(axis=(1, 3))


def render_scene(seed: int, size: int = 32, n_objects: int | None = None, class_suffix: bool = False,
                 world: World | str | None = DEFAULT_WORLD, objects: list[tuple[str, str]] | None = None) -> Scene:
    """Render scene `seed` at `size` x `size` pixels. Deterministic in (seed, size, n_objects, world, objects).

    `objects` forces the (colour, shape) pairs drawn, in order; any drawable colour/shape of the
    world (held-out ones included). Otherwise pairs are distinct and drawn from the training ones.
    """
    world = get_world(world)
    rng = _rng(seed)
    if objects is not None:
        n_target = len(objects)
    elif n_objects is not None:
        n_target = int(n_objects)
    elif len(set(world.count_weights)) == 1 and len(world.count_weights) == MAX_OBJECTS:
        n_target = int(rng.integers(1, MAX_OBJECTS + 1))  # (the v1 draw, kept for byte-identical v1 scenes)
    else:
        w = np.asarray(world.count_weights, dtype=np.float64)
        n_target = int(rng.choice(len(w), p=w / w.sum())) + 1
    if not 1 <= n_target <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n_target}")
    if objects is not None:
        bad = [o for o in objects if o[0] not in world.drawable_colours or o[1] not in world.drawable_shapes]
        if bad:
            raise ValueError(f"objects {bad} are not drawable in world {world.name!r}")
    image = _background(rng, size, world.background)
    lo, hi = world.size_frac
    # Place objects; a candidate is accepted only if every object keeps min_visible of itself.
    placed: list[dict] = []
    hard_masks: list[np.ndarray] = []
    used: set[tuple[str, str]] = set()
    for k in range(n_target):
        for _attempt in range(30):
            if objects is not None:
                colour, shape = objects[k]
            else:
                shape = world.shapes[int(rng.integers(len(world.shapes)))]
                colour = world.colours[int(rng.integers(len(world.colours)))]
                if (colour, shape) in used:
                    continue
            extent = rng.uniform(lo, hi) * size
            r = extent / 2
            cx = rng.uniform(r * 0.8, size - r * 0.8)
            cy = rng.uniform(r * 0.8, size - r * 0.8)
            angle = rng.uniform(0, 2 * math.pi)
            cov = shape_coverage(shape, cx, cy, r, angle, size)
            hard = cov >= 0.5
            if hard.sum() < 4:
                continue
            # Every earlier object must stay min_visible visible under all objects drawn after it.
            later = hard.copy()
            ok = True
            for prev in reversed(hard_masks):
                if (prev & ~later).sum() < world.min_visible * prev.sum():
                    ok = False
                    break
                later |= prev
            if not ok:
                continue
            placed.append(dict(shape=shape, colour=colour, cx=cx, cy=cy, r=r, angle=angle, cov=cov, extent=extent))
            hard_masks.append(hard)
            used.add((colour, shape))
            break
    # Composite in drawing order; slight per-object brightness jitter keeps colours natural.
    for obj in placed:
        col = np.asarray(PALETTE[obj["colour"]], dtype=np.float64) / 255.0
        col = (col * rng.uniform(0.9, 1.05)).clip(0, 1)
        a = obj["cov"][..., None]
        image = image * (1 - a) + col[None, None, :] * a
    instances = np.zeros((size, size), dtype=np.uint8)
    semantic = np.zeros((size, size), dtype=np.uint8)
    for i, (obj, hard) in enumerate(zip(placed, hard_masks), start=1):
        instances[hard] = i  # later objects overwrite earlier ones: the visible part wins
        semantic[hard] = category_id(obj["shape"])
    objects: list[ShapeObject] = []
    for i, obj in enumerate(placed, start=1):
        m = instances == i
        ys, xs = np.nonzero(m)
        box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        objects.append(ShapeObject(obj["shape"], obj["colour"], i, box, int(m.sum()),
                                   (float(obj["cx"]), float(obj["cy"])), float(obj["extent"])))
    caption = make_caption([(o.colour, o.shape) for o in objects], class_suffix=class_suffix)
    img8 = np.round(image * 255).clip(0, 255).astype(np.uint8)
    return Scene(seed=int(seed), image=img8, semantic=semantic, instances=instances, objects=objects, caption=caption)


def render_batch(seeds, size: int = 32, world: World | str | None = DEFAULT_WORLD) -> tuple[np.ndarray, list[Scene]]:
    """Scenes for `seeds` and their images stacked as N x H x W x 3 uint8."""
    scenes = [render_scene(int(s), size, world=world) for s in seeds]
    return np.stack([s.image for s in scenes]), scenes
