"""Detection-adaptor benchmark on the shapes world: adaptor boxes vs attention-derived boxes.

    python bench/adaptor.py [--model builtin:shapes-v2] [--adaptor builtin:shapes-v2-adaptor] [--quick]

Prints one JSON object (also written to --out/adaptor.json):
  real       held-out *real* renders (a stream no training used): each image noised to the
             adaptor's timestep, one UNet pass with its caption; box AP / AP50 (COCOeval, per
             class) of the adaptor and of the attention instances ("refined" labels, score =
             mean class score) read from the same pass.
  generated  image-to-image from other held-out renders at --strength (DiffusionEngine's mode,
             the one place generated images have ground truth: the source's boxes); the
             adaptor reads the last denoising step's features, the attention labels the same
             run's attention; AP / AP50 of both against the source boxes.
Target (issue 6): adaptor AP50 >= 0.90 on real images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from quality import caption_mentions, to_tensor  # noqa: E402

from shared.formats.model_meta import model_side  # noqa: E402
from shared.shapes import SHAPES, render_scene  # noqa: E402
from shared.shapes.dataset import scene_seed  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402

REAL_STREAM, GEN_STREAM = 910_101, 910_102  # disjoint from training (61) and bench/quality streams


def gt_doc(scenes) -> dict:
    anns = []
    for i, s in enumerate(scenes):
        for o in s.objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o.category_id, "bbox": list(o.box),
                         "area": float(o.area), "iscrowd": 0})
    h, w = scenes[0].semantic.shape
    return {"images": [{"id": i + 1, "width": w, "height": h} for i in range(len(scenes))], "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES)]}


def attention_dets(store, j, image_id, mentions, enc_offsets, spec, size) -> list[dict]:
    from worker.engine.text import token_groups
    from worker.labels.from_attention import label_image

    groups = token_groups(enc_offsets, mentions)
    res = label_image(store, j, groups, [m.category_id for m in mentions], [m.name for m in mentions], spec, (size, size))
    return [{"image_id": image_id, "category_id": a.category_id, "bbox": list(a.bbox), "score": a.score}
            for a in res.annotations]


def adaptor_dets(adaptor, features, size, first_id, category_ids) -> list[dict]:
    from worker.adaptor.evaluate import detections_to_coco
    from worker.adaptor.model import decode

    found = decode(*adaptor(features), adaptor.config.out_stride, (size, size), 0.01, 0.5)
    out = []
    for k, d in enumerate(found):
        out += detections_to_coco(first_id + k, d, category_ids)
    return out


@torch.no_grad()
def run(model_id: str, adaptor_ref: str, n_real: int, n_gen: int, strength: float, batch: int, seed: int) -> dict:
    from shared.formats.spec import GenerationSpec, LabelSpec
    from worker.adaptor.backbone import noise_seed
    from worker.adaptor.evaluate import box_ap
    from worker.adaptor.io import check_adaptor_fits, load_adaptor
    from worker.engine.attention import CaptureConfig, capture_attention
    from worker.engine.features import FeatureConfig, capture_features
    from worker.engine.generate import InitImages, generate
    from worker.engine.loading import load_model
    from worker.engine.text import encode_prompts

    model = load_model(model_id)
    adaptor = load_adaptor(adaptor_ref, model.device)
    check_adaptor_fits(adaptor, model.info, model.unet, where=repr(adaptor_ref))
    cat_ids = [SHAPES.index(c) + 1 for c in adaptor.config.classes]
    rec = model.extras.get("recommended_labels", {})
    cross, self_res = tuple(rec.get("cross_resolutions", (16, 32))), int(rec.get("self_resolution", 32))
    spec = LabelSpec(mode="refined", cross_resolutions=list(cross), self_resolution=self_res)
    result: dict = {"model": model.info.model_dump(), "adaptor": adaptor_ref, "timestep": adaptor.config.timestep}

    # ---------------------------------------------------------------- real
    t0 = time.perf_counter()
    size = model_side(model.extras)  # the model's own side and world
    world = get_world(model.extras.get("world"))
    scenes = [render_scene(scene_seed(REAL_STREAM, i), size, world=world) for i in range(n_real)]
    cfg = CaptureConfig(latent_hw=(size, size), cross_resolutions=cross, self_resolutions=(self_res,))
    a = model.scheduler.alphas_cumprod[adaptor.config.timestep].float()
    dets = {"adaptor": [], "attention": []}
    for b0 in range(0, n_real, batch):
        chunk = scenes[b0:b0 + batch]
        plans = [caption_mentions(s.caption, suffix=False) for s in chunk]
        enc = encode_prompts(model, [p for p, _ in plans])
        x0 = to_tensor([s.image for s in chunk])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(noise_seed(seed, b0 + k + 1)))
                             for k in range(len(chunk))])
        xt = (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(model.device, model.dtype)
        tt = torch.full((len(chunk),), adaptor.config.timestep, device=model.device)
        mask = None if enc.attention_mask is None else enc.attention_mask.to(model.device)
        with capture_attention(model.unet, cfg) as store, capture_features(model.unet, FeatureConfig()) as feats:
            store.begin_step(0, 1)
            feats.capture_next_call()
            model.unet(xt, tt, encoder_hidden_states=enc.embeds.to(model.device, model.dtype), encoder_attention_mask=mask)
        dets["adaptor"] += adaptor_dets(adaptor, feats.levels(), size, b0 + 1, cat_ids)
        for j, (_, mentions) in enumerate(plans):
            dets["attention"] += attention_dets(store, j, b0 + j + 1, mentions, enc.offsets[j], spec, size)
    gt = gt_doc(scenes)
    result["real"] = {k: box_ap(gt, v) for k, v in dets.items()}
    result["real"]["seconds"] = round(time.perf_counter() - t0, 1)

    # ---------------------------------------------------------------- generated (image2image)
    t0 = time.perf_counter()
    gen_defaults = model.extras.get("default_generation", {})
    gen = GenerationSpec(width=size, height=size, steps=int(gen_defaults.get("steps", 20)),
                         guidance_scale=float(gen_defaults.get("guidance_scale", 3.0)),
                         scheduler=gen_defaults.get("scheduler", "default"), batch_size=batch)
    scenes = [render_scene(scene_seed(GEN_STREAM, i), size, world=world) for i in range(n_gen)]
    dets = {"adaptor": [], "attention": []}
    cfg_g = CaptureConfig(latent_hw=(size, size), cross_resolutions=cross, self_resolutions=(self_res,), guidance=True)
    for b0 in range(0, n_gen, batch):
        chunk = scenes[b0:b0 + batch]
        plans = [caption_mentions(s.caption, suffix=False) for s in chunk]
        init = InitImages(to_tensor([s.image for s in chunk]), strength)
        out = generate(model, [p for p, _ in plans], [seed * 100_000 + b0 + k for k in range(len(chunk))], gen,
                       capture=cfg_g, features=FeatureConfig(step=adaptor.config.feature_step), init=init)
        dets["adaptor"] += adaptor_dets(adaptor, out.features, size, b0 + 1, cat_ids)
        for j, (_, mentions) in enumerate(plans):
            dets["attention"] += attention_dets(out.store, j, b0 + j + 1, mentions, out.encoded.offsets[j], spec, size)
    gt = gt_doc(scenes)
    result["generated"] = {k: box_ap(gt, v) for k, v in dets.items()}
    result["generated"].update({"strength": strength, "steps_run": gen.steps - init.start_step(gen.steps),
                                "seconds": round(time.perf_counter() - t0, 1)})
    result["target"] = {"real_adaptor_AP50": 0.90, "met": result["real"]["adaptor"]["AP50"] >= 0.90}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--adaptor", default="builtin:shapes-v2-adaptor")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--n-real", type=int, default=200)
    p.add_argument("--n-gen", type=int, default=100)
    p.add_argument("--strength", type=float, default=0.4, help="image2image strength of the generated set")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="50 real and 25 generated images")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.n_real, a.n_gen = 50, 25
    result = run(a.model, a.adaptor, a.n_real, a.n_gen, a.strength, a.batch, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "adaptor.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
