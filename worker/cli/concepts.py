"""`dsgen concepts learn`: textual inversion of new tokens from a few images (DA-Fusion)."""
from __future__ import annotations

from pathlib import Path

import click

from worker.cli import UserError, cli
from worker.engine.concepts import UNET_PARAMS
from worker.engine.image_sources import IMAGE_SUFFIXES


@cli.group()
def concepts() -> None:
    """Learned concepts: new prompt tokens for objects the model cannot draw (spec `concepts:`)."""


def _images(images: Path | None, source: Path | None, fmt: str, cls: str | None, limit: int,
            masked: bool = False) -> tuple[list[Path], list | None]:
    """The learning images, and with `masked` each one's mask of the class."""
    if (images is None) == (source is None):
        raise UserError("--images / --source: give exactly one (a folder of images, or a labelled dataset + --class)")
    if masked and source is None:
        raise UserError("--masked: learning inside the objects' masks needs them: give a labelled dataset with "
                        "--source and --class instead of --images")
    if images is not None:
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"--images: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images}")
        return found[:limit], None
    if not cls:
        raise UserError("--class: with --source, name the class whose images teach the concept")

    from shared.formats.spec import SourceSpec, SpecError
    from worker.engine.mask_sources import load_mask_sources, source_class_names

    try:
        names = source_class_names(source, fmt)
        if cls not in names:
            raise UserError(f"--class: {cls!r} is not a class of {source}; its classes: {', '.join(names)}")
        found = load_mask_sources(SourceSpec(path=str(source), format=fmt), tuple(names), source)
    except SpecError as err:
        raise UserError(str(err).replace("mask2image.source", "--source")) from None
    cid = names.index(cls) + 1
    paths, masks = [], []
    for s in found:  # in the source's order, until `limit` images show the class
        if s.image is None:
            continue
        mask = s.load().semantic == cid
        if mask.any():
            paths.append(s.image)
            masks.append(mask if masked else None)
            if len(paths) == limit:
                break
    if not paths:
        raise UserError(f"--source: no image of {source} shows a {cls!r}")
    return paths, (masks if masked else None)


@concepts.command("learn")
@click.option("--model", "model_id", required=True, help="the base model (builtin:<name> or a diffusers folder)")
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="a folder of images of the concept")
@click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="or a labelled dataset (dsgen/COCO/VOC/masks folder): its images showing --class")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "masks", "coco", "voc", "dsgen"]))
@click.option("--class", "cls", default=None, help="with --source: the class")
@click.option("--token", "tokens", multiple=True, required=True, help='the new token, e.g. "<my-part>" (repeatable)')
@click.option("--init-word", "init_words", multiple=True, help="a related word each token starts from (default: 'the'"
              " if the model knows it, else its first word)")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="concept folder")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=5e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--vectors", default=1, show_default=True, type=click.IntRange(1, 16),
              help="embedding vectors per token (more capacity for a concept far from every word the model knows)")
@click.option("--max-images", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--masked", is_flag=True, help="with --source: the tokens attend only inside the class's masks while "
              "learning (rectified cross-attention), so they learn the object, not the picture; for models trained "
              "with rectified attention (the shapes models) and for drawing the concept with mask2image or layout.shapes")
@click.option("--unet-steps", default=0, show_default=True, type=click.IntRange(min=0),
              help="then fine-tune the UNet's cross-attention key/value this many steps (Custom Diffusion) for what "
              "no embedding reaches, e.g. a colour the model never drew; the concept then carries unet.safetensors")
@click.option("--unet-lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--unet-params", default=UNET_PARAMS[0], show_default=True, type=click.Choice(UNET_PARAMS),
              help="with --unet-steps: what trains, the cross-attention key/value (Custom Diffusion, a small file) or "
              "all of the UNet (DreamBooth; a UNet's worth of file, for small models)")
@click.option("--prior-images", default=16, show_default=True, type=click.IntRange(min=0),
              help="with --unet-steps: the base model's own pictures of the init words, half of each batch, so those "
              "words keep drawing what they drew (0: none)")
@click.option("--template", "templates", multiple=True, help='prompt template with {} for the tokens, e.g. "a photo of a {}"')
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume/--restart", default=True, show_default=True, help="continue from --out's checkpoint")
@click.option("--threads", default=None, type=int, help="torch CPU threads")
def learn_cmd(model_id, images, source, fmt, cls, tokens, init_words, out, steps, lr, batch_size, vectors, max_images,
              masked, unet_steps, unet_lr, unet_params, prior_images, templates, seed, resume, threads) -> None:
    """Learn TOKEN(s) from a few images: their embeddings (textual inversion), then with
    --unet-steps the UNet's cross-attention key/value too."""
    import torch

    from shared.formats.spec import SpecError
    from worker.engine.concept_training import LearnConfig, learn_concept
    from shared.formats.concepts import CONCEPT_FILE
    from worker.engine.concepts import check_token
    from worker.engine.loading import load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        for t in tokens:
            check_token(t)
    except SpecError as err:
        raise UserError(str(err)) from None
    if len(set(tokens)) != len(tokens):
        raise UserError("--token: each token once")
    if init_words and len(init_words) != len(tokens):
        raise UserError(f"--init-word: give one per --token ({len(tokens)}), or none")
    if (out / CONCEPT_FILE).is_file() and not resume:
        raise UserError(f"--out: {out} already holds a learned concept; pick another folder")
    paths, masks = _images(images, source, fmt, cls, max_images, masked)
    try:
        model = load_model(model_id)
        if not init_words:
            vocab = model.tokenizer.get_vocab()
            word = "the" if "the" in vocab else next(w for w in vocab if w not in model.tokenizer.all_special_tokens)
            init_words = (word,) * len(tokens)
        cfg = LearnConfig(tokens=list(tokens), init_words=list(init_words), steps=steps, lr=lr, batch_size=batch_size,
                          seed=seed, templates=list(templates) or None, vectors=vectors, masked=masked,
                          unet_steps=unet_steps, unet_lr=unet_lr, unet_params=unet_params, prior_images=prior_images)
        click.echo(f"learning {' '.join(tokens)} from {len(paths)} images on {model.info.id} ({model.info.revision}), "
                   f"{steps} steps")
        # one bar over both steps: textual inversion, then (--unet-steps) the cross-attention fine-tune
        with click.progressbar(length=steps + unet_steps, label="textual inversion", show_pos=True) as bar:
            done = [0]

            def advance(offset: int, label: str):
                def progress(step: int, total: int, loss: float) -> None:
                    bar.label = f"{label} (loss {loss:.4f})"
                    bar.update(offset + step - done[0])
                    done[0] = offset + step
                return progress

            state = learn_concept(model, paths, cfg, out, progress=advance(0, "textual inversion"), resume=resume,
                                  masks=masks, unet_progress=advance(steps, f"UNet fine-tune ({unet_params})"))
    except SpecError as err:
        raise UserError(str(err)) from None
    tuned = f" + {unet_steps} UNet steps ({unet_params})" if unet_steps else ""
    click.echo(f"wrote {out} ({' '.join(tokens)}, {state.step} steps{tuned}); use it with `concepts: [{out}]` in a spec")


@cli.command("mix")
@click.option("--real", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="the real dataset folder (dsgen layout) the augment job read")
@click.option("--synthetic", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="the augment job's output folder")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--p", "p", default=0.5, show_default=True, type=float, help="chance a real sample is replaced by a variant")
@click.option("--seed", default=0, show_default=True, type=int)
def mix_cmd(real: Path, synthetic: Path, out: Path, p: float, seed: int) -> None:
    """A real+synthetic training set (DA-Fusion): each real sample replaced by one of its variants with p."""
    from shared.formats.export.mix import mix_folders
    from shared.formats.spec import SpecError

    try:
        summary = mix_folders(real, synthetic, out, p, seed)
    except SpecError as err:
        raise UserError(str(err)) from None
    click.echo(f"wrote {out}: {summary['samples']} samples ({summary['synthetic']} synthetic, {summary['real']} real); "
               "lineage in lineage.jsonl and the COCO images")
