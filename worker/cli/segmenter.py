"""`dsgen segmenter train`: FreeMask's real-data segmenter (filter and hardness-aware resampling)."""
from __future__ import annotations

from pathlib import Path

import click

from worker.cli import UserError, cli


@cli.group()
def segmenter() -> None:
    """A small segmenter trained on real labelled data (labels.filter.segmenter, mask2image.resample)."""


@segmenter.command("train")
@click.option("--source", "source", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="real labelled data: a dsgen folder, a COCO folder, a VOC folder or a masks folder with images/")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "masks", "coco", "voc", "dsgen"]))
@click.option("--classes", default=None, help="comma-separated class names in id order (default: the source's own)")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="segmenter folder")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--size", "size", default=None, type=click.IntRange(min=8), help="training side in pixels (default: the images')")
@click.option("--width", default=32, show_default=True, type=click.IntRange(min=8), help="channels of the first level")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--calibration-split", default=0.0, show_default=True, type=click.FloatRange(0.0, 0.5),
              help="share of the images held out of training, the real-loss quantiles (labels.filter.reference: "
                   "real_quantile) measured on them; 0: on the training images, as the class mean is (measured "
                   "better on the shapes world: docs/methods.md)")
@click.option("--threads", default=None, type=int, help="torch CPU threads")
def train_cmd(source: Path, fmt: str, classes: str | None, out: Path, epochs: int, size: int | None, width: int,
              seed: int, calibration_split: float, threads: int | None) -> None:
    """Train on SOURCE's images and masks; store weights and the class-wise mean loss (and loss quantiles) on that data."""
    import torch

    from worker.labels.segmenter import calibration_holdout, train_segmenter

    if threads:
        torch.set_num_threads(threads)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} is not empty")
    names, items = _real_items(source, fmt, classes)
    side = size or items[0][0].size[0]
    side -= side % 4
    items, held = calibration_holdout(items, calibration_split, seed)
    click.echo(f"training on {len(items)} images ({len(held)} held out for the loss quantiles), classes {names}, "
               f"{side}px, {epochs} epochs")
    with click.progressbar(length=epochs, label="segmenter", show_pos=True) as bar:
        def progress(epoch: int, total: int, loss: float) -> None:
            bar.label = f"segmenter (loss {loss:.4f})"
            bar.update(1)

        seg, summary = train_segmenter(items, names, image_size=side, epochs=epochs, width=width, seed=seed,
                                       progress=progress, calibration=held)
    seg.save(out, {"training": {**summary, "source": str(source)}})
    click.echo(f"wrote {out}; class mean loss: " + ", ".join(f"{k} {v:.3f}" for k, v in seg.class_mean_loss.items()))
    click.echo("99 % of real pixels under: " + ", ".join(f"{k} {v['0.99']:.3f}" for k, v in seg.class_loss_quantiles.items()))


def _real_items(source: Path, fmt: str, classes: str | None) -> tuple[list[str], list]:
    """(class names, [(image, semantic map)]) of a real labelled source, or a UserError naming --source."""
    from PIL import Image

    from shared.formats.spec import SourceSpec, SpecError
    from worker.engine.mask_sources import load_mask_sources, source_class_names

    try:
        names = [c.strip() for c in classes.split(",") if c.strip()] if classes else source_class_names(source, fmt)
        found = load_mask_sources(SourceSpec(path=str(source), format=fmt), tuple(names), source)
        items = []
        for s in found:
            if s.image is None:
                continue
            with Image.open(s.image) as im:
                items.append((im.convert("RGB"), s.load().semantic))
    except SpecError as err:
        raise UserError(str(err).replace("mask2image.source", "--source")) from None
    if not items:
        raise UserError(f"--source: no masks with their real images in {source}")
    return names, items


@segmenter.command("import")
@click.option("--torchscript", "file", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="your segmenter, saved with torch.jit.save: RGB [B, 3, S, S] in [0, 1] -> logits [B, 1 + C, h, w] "
                   "(0 background, then --classes in order)")
@click.option("--source", "source", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="real labelled data the class mean loss and loss quantiles are measured on (as for train)")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "masks", "coco", "voc", "dsgen"]))
@click.option("--classes", default=None, help="comma-separated class names in the network's order (default: the source's)")
@click.option("--size", "size", required=True, type=click.IntRange(min=4), help="the side S the network takes")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="segmenter folder")
def import_cmd(file: Path, source: Path, fmt: str, classes: str | None, size: int, out: Path) -> None:
    """Wrap your own TorchScript segmenter as a segmenter folder (labels.filter.segmenter, local runs only)."""
    from shared.formats.spec import SpecError
    from worker.labels.segmenter import import_segmenter

    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out: {out} is not empty")
    if size % 4:
        raise UserError("--size: give a multiple of 4")
    names, items = _real_items(source, fmt, classes)
    try:
        seg = import_segmenter(file, names, size, items)
    except SpecError as err:
        raise UserError(str(err)) from None
    seg.save(out, {"imported": {"torchscript": file.name, "source": str(source), "images": len(items)}})
    click.echo(f"wrote {out}; class mean loss: " + ", ".join(f"{k} {v:.3f}" for k, v in seg.class_mean_loss.items()))
