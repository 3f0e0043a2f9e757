"""Does more than an embedding teach the shapes model a concept it never saw? (An experiment.)

    python bench/concepts_finetune.py [--unet-steps 200] [--out bench/out]

Textual inversion alone does not draw the held-out concept (docs/concepts-augment.md: 0.00 per
object): shapes-v2 never drew the colour cyan, and a new word vector cannot make its UNet draw a
colour it never learned. This experiment adds DreamBooth's step on top of the learned tokens
(pivotal tuning): the UNet itself is fine-tuned on the 16 learning renders ("a <cyan> <cross>"),
half of every batch being the model's own training world with its captions (prior preservation,
so the other concepts are not forgotten). Then the concept is drawn as `bench/concepts.py` draws
it (text2image, and layout with the concept's own 16 shapes) and read by the same judge, per
object and by pixels; the model's own concepts are read again (text2image fidelity of "a blue
star" etc.) to see what the fine-tune cost them.

Not a product path yet: the fine-tuned UNet lives in this process only (it is written into the
loaded model in place). Prints one JSON object (and writes <out>/concepts_finetune.json).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import concepts as cb  # noqa: E402  (bench/concepts.py: renders, judge, generation, reading)
import quality as q  # noqa: E402
from shared.shapes import render_scene  # noqa: E402
from shared.shapes.dataset import scene_seed, write_sample  # noqa: E402
from shared.shapes.world import get_world  # noqa: E402


def finetune_unet(model, concept_dir: Path, images: np.ndarray, phrase: str, steps: int, lr: float, batch: int,
                  seed: int, log=print, masks: np.ndarray | None = None, only: tuple[str, ...] = ()) -> list[float]:
    """DreamBooth on top of the learned tokens: half of each batch the concept's renders with
    `phrase`, half the training world with its captions (prior preservation). In place. With
    `masks` the concept's tokens attend only inside each render's object (rectified, as the
    model was trained and as layout draws)."""
    import contextlib

    from diffusers import DDPMScheduler

    from worker.engine.attention import control_attention
    from worker.engine.concept_training import _rectified

    from worker.engine.concepts import with_concepts
    from worker.engine.text import encode_prompts
    from worker.shapes.train import batch_for_step

    text_model = with_concepts(model, [concept_dir])  # the tokens; the UNet is shared with `model`
    unet = model.unet
    # `only`: train just the parameters whose names end so (Custom Diffusion: the cross-attention
    # key and value projections, what maps words into the picture)
    trained = [p for n, p in unet.named_parameters() if not only or n.endswith(only)]
    unet.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    unet.train()
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    sched = DDPMScheduler.from_config(model.scheduler.config)
    n_train = sched.config.num_train_timesteps
    x_concept = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    side = x_concept.shape[-1]
    m_concept = None if masks is None else torch.from_numpy(masks.astype(np.int64))
    token_ids = [text_model.tokenizer.convert_tokens_to_ids(t) for t in phrase.split()]
    world = get_world(model.extras.get("world"))
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        half = batch // 2
        idx = torch.randint(len(x_concept), (half,), generator=g)
        xc = x_concept[idx]
        flip = torch.rand(half, generator=g) < 0.5
        xc = torch.where(flip[:, None, None, None], xc.flip(-1), xc)
        controls = []
        if m_concept is not None:  # the world half holds none of the tokens: its zero masks restrict nothing
            mc = torch.where(flip[:, None, None], m_concept[idx].flip(-1), m_concept[idx])
            mb = torch.cat([mc, torch.zeros(batch - half, side, side, dtype=torch.int64)])
            controls = [_rectified(text_model, [phrase] * half + [""] * (batch - half), token_ids, mb)]
        xw, captions = batch_for_step(seed + 17, step, batch - half, side, 0.1, 0.25, world=world)
        x0 = torch.cat([xc, xw])
        prompts = [phrase] * half + list(captions)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(n_train, (len(x0),), generator=g)
        noisy = sched.add_noise(x0, noise, t)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        with torch.no_grad():
            enc = encode_prompts(text_model, prompts)
        with control_attention(unet, controls, (side, side)) if controls else contextlib.nullcontext():
            pred = unet(noisy, t, encoder_hidden_states=enc.embeds, encoder_attention_mask=enc.attention_mask).sample
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            log(f"unet {step + 1}/{steps} loss {np.mean(losses[-25:]):.4f}")
    unet.requires_grad_(False).eval()
    return losses


def main(argv: list[str] | None = None) -> None:
    from worker.engine.concept_training import LearnConfig, learn_concept
    from worker.engine.loading import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:shapes-v2")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--ti-steps", type=int, default=400)
    p.add_argument("--unet-steps", type=int, default=200)
    p.add_argument("--unet-lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-eval", type=int, default=100)
    p.add_argument("--n-judge", type=int, default=2000)
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rectify", action="store_true", help="fine-tune with the tokens kept inside each render's object")
    p.add_argument("--cross-kv", action="store_true",
                   help="fine-tune only the cross-attention key/value projections (Custom Diffusion), not the whole UNet")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.manual_seed(a.seed)
    started = time.time()
    model = load_model(a.model)  # the cached instance: generation by id below sees the fine-tuned UNet
    cb.use_model_side(model)
    world = get_world(model.extras.get("world"))
    held = (world.held_out_colours[0], world.held_out_shapes[0])
    folder = a.out / "concepts-finetune"
    shapes_dir, images, masks = folder / "shapes", [], []
    for i in range(a.images):  # the same renders as bench/concepts.py learns from
        scene = render_scene(scene_seed(cb.CONCEPT_STREAM, i), cb.SIDE, world=world, objects=[held])
        write_sample(shapes_dir, i, scene)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        scene.to_pil().save(folder / "images" / f"{i:02d}.png")
        images.append(scene.image)
        masks.append(scene.semantic > 0)
    tokens, init = [f"<{held[0]}>", f"<{held[1]}>"], ["blue", "star"]
    phrase = " ".join(tokens)
    concept_dir = folder / f"concept-ti{a.ti_steps}-s{a.seed}"
    t0 = time.time()
    learn_concept(model, sorted((folder / "images").glob("*.png")),
                  LearnConfig(tokens=tokens, init_words=init, steps=a.ti_steps, lr=5e-3, batch_size=a.batch, seed=a.seed),
                  concept_dir, resume=True)
    ti_s = time.time() - t0
    log(f"textual inversion {ti_s:.0f}s")

    jw = cb.judge_world(world)
    q.use_world(jw, cb.SIDE)
    judge = q.PairJudge(cb.judge_scenes(world, cb.JUDGE_STREAM, a.n_judge, held), a.judge_epochs, a.seed)
    rule = q.object_rule(judge)
    pair = q.pair_index(*held)

    def read(imgs) -> dict:
        objects = cb.object_rates(judge, rule, jw, held, imgs, tuple(init))
        pres = judge.presence(imgs)
        return {"objects": objects, "pixel_presence": round(float(pres[:, pair].mean()), 4)}

    grids: dict[str, list] = {}  # reading -> its first images, one grid column each

    def draw(tag: str) -> dict:
        t2i = cb.generate(a.model, concept_dir, f"a {phrase}", tokens, a.n_eval, 20, 3.0, a.seed)
        lay = cb.generate_layout(a.model, concept_dir, tokens[0], held[1], tokens[1], shapes_dir, a.n_eval, 20,
                                 cb.LAYOUT_GUIDANCE, a.seed)
        # the colour token with the shape token left at its init word: the shape is the region's
        lay_word = cb.generate_layout(a.model, concept_dir, tokens[0], held[1], init[1], shapes_dir, a.n_eval, 20,
                                      cb.LAYOUT_GUIDANCE, a.seed)
        # the model's own concepts after the change: "a blue star" read by the same judge
        own = cb.generate(a.model, None, "a blue star", ["star"], a.n_eval, 20, 3.0, a.seed)
        own_pres = judge.presence(own)[:, q.pair_index("blue", "star")]
        grids[tag] = [t2i[:8], lay[:8], lay_word[:8], own[:8]]
        return {"text2image": read(t2i), "layout_with_own_shapes": read(lay),
                f"layout_with_own_shapes_word_{init[1]}": read(lay_word),
                "own_concept_blue_star": {"pixel_presence": round(float(own_pres.mean()), 4),
                                          "objects": cb.object_rates(judge, rule, jw, ("blue", "star"), own, ("blue", "star"))}}

    result = {"model": a.model, "concept": list(held), "tokens": tokens, "learn_images": a.images,
              "textual_inversion": {"steps": a.ti_steps, "seconds": round(ti_s, 1)}}
    result["before_unet"] = draw("before")  # textual inversion only
    log(f"TI only: {json.dumps(result['before_unet'])}")
    t1 = time.time()
    losses = finetune_unet(model, concept_dir, np.stack(images), phrase, a.unet_steps, a.unet_lr, a.batch, a.seed, log,
                           masks=np.stack(masks) if a.rectify else None,
                           only=("attn2.to_k.weight", "attn2.to_v.weight") if a.cross_kv else ())
    result["unet_finetune"] = {"steps": a.unet_steps, "lr": a.unet_lr, "batch": a.batch, "seconds": round(time.time() - t1, 1),
                               "rectified": a.rectify, "trained": "cross-attention k/v" if a.cross_kv else "whole UNet",
                               "final_loss": round(float(np.mean(losses[-25:])), 5), "prior_preservation": "half of each batch"}
    result["after_unet"] = draw("after")
    log(f"TI + UNet: {json.dumps(result['after_unet'])}")
    real = [render_scene(scene_seed(cb.JUDGE_TEST_STREAM, i), cb.SIDE, world=world, objects=[held]).image for i in range(100)]
    result["real_renders"] = read(real)
    result["seconds"] = round(time.time() - started, 1)
    columns = grids["before"] + grids["after"] + [real[:8]]  # one column per reading, 8 images down
    q.save_grid([list(row) for row in zip(*columns)], a.out / "concepts_finetune_grid.png",
                labels=["TI: a <cyan> <cross>", "TI: layout", f"TI: layout, {init[1]}", "TI: a blue star",
                        "TI+UNet: a <cyan> <cross>", "TI+UNet: layout", f"TI+UNet: layout, {init[1]}",
                        "TI+UNet: a blue star", "real"])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "concepts_finetune.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
