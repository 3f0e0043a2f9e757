"""`dsgen adaptor ...`: train and inspect detection adaptors (boxes from the UNet's features)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from shared.formats.spec import SpecError
from worker.cli import UserError, cli


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise UserError(f"--size: expected WIDTHxHEIGHT, e.g. 512x512 (got {value!r})") from None
    return h, w


@cli.group()
def adaptor() -> None:
    """Detection adaptors: a small head that reads boxes off the diffusion model's own features."""


@adaptor.command("train")
@click.option("--model", "model", required=True, help="base model: builtin:<name>, a diffusers folder or a hub id")
@click.option("--coco", required=True, type=click.Path(dir_okay=False, path_type=Path), help="COCO instances JSON (training set)")
@click.option("--images", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder of the --coco images")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="adaptor folder")
@click.option("--val-coco", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="validation COCO JSON (default: hold out --val-fraction of --coco)")
@click.option("--val-images", type=click.Path(file_okay=False, path_type=Path), default=None, help="folder of the --val-coco images")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.9))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--timestep", default=None, type=click.IntRange(min=0),
              help="timestep real images are noised to (default: the last step of the model's default generation)")
@click.option("--width", default=64, show_default=True, type=click.IntRange(min=8), help="channels of the mapped features and head")
@click.option("--class-agnostic", is_flag=True, help="one 'object' class instead of the COCO categories")
@click.option("--size", default=None, help="WIDTHxHEIGHT the images are resized to (default: the model's default size)")
@click.option("--caption", default="auto", show_default=True, type=click.Choice(["auto", "classes"]),
              help="auto: the image's caption field or dsgen record prompt, else class names; classes: class names")
@click.option("--cache-features", is_flag=True, help="one UNet pass per image, features kept in memory (fast on small sets)")
@click.option("--max-minutes", default=None, type=float, help="stop after the epoch that passes this many minutes")
@click.option("--threads", default=None, type=int, help="torch CPU threads")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pt")
@click.option("--overwrite", is_flag=True, help="replace an existing --out folder")
def train_cmd(model, coco, images, out, val_coco, val_images, val_fraction, epochs, batch_size, lr, seed, timestep, width,
              class_agnostic, size, caption, cache_features, max_minutes, threads, resume, overwrite) -> None:
    """Train an adaptor on real COCO-labeled images; the UNet stays frozen."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.adaptor.train import TrainConfig, Trainer, TrainingError, check_out_folder

    cfg = TrainConfig(model=model, coco=str(coco), images=str(images), out=str(out),
                      val_coco=str(val_coco) if val_coco else None, val_images=str(val_images) if val_images else None,
                      val_fraction=val_fraction, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, timestep=timestep,
                      width=width, class_agnostic=class_agnostic, size=_size(size), caption=caption,
                      cache_features=cache_features, max_minutes=max_minutes, threads=threads)
    try:
        check_out_folder(out, resume, overwrite)
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        trainer = Trainer(cfg)
        resumed = resume and trainer.resume()
    except (SpecError, TrainingError) as err:
        raise UserError(str(err)) from None
    if resumed:
        click.echo(f"resuming after epoch {trainer.epoch} of {epochs}")
    click.echo(f"{len(trainer.train_items)} training / {len(trainer.val_items)} validation images, "
               f"timestep {trainer.timestep}, {len(trainer.classes)} class(es), size {trainer.size[1]}x{trainer.size[0]}")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("epoch", total=trainer.steps_per_epoch, info="")
        feat_task = {}

        def on_progress(name, done, total):
            if name not in feat_task:
                feat_task[name] = progress.add_task(f"features ({name})", total=total, info="")
            progress.update(feat_task[name], completed=done)

        def on_batch(k, n, loss):
            progress.update(task, description=f"epoch {trainer.epoch + 1}/{epochs}", completed=k, info=f"loss {loss:.4f}")

        def on_epoch(r):
            progress.console.print(f"epoch {r.epoch}: loss {r.loss:.4f}  val AP {r.metrics['AP']:.4f}  "
                                   f"AP50 {r.metrics['AP50']:.4f}  ({r.seconds:.0f}s)")
            progress.reset(task)

        trainer.run(on_batch=on_batch, on_epoch=on_epoch, on_progress=on_progress)
    click.echo(f"adaptor written to {out}")


@adaptor.command("info")
@click.argument("ref")
def info_cmd(ref: str) -> None:
    """Print an adaptor's config (base model, blocks, timestep, classes, validation metrics)."""
    from worker.adaptor.io import CONFIG_FILE, resolve_adaptor_path

    try:
        path = resolve_adaptor_path(ref)
    except SpecError as err:
        raise UserError(str(err)) from None
    click.echo(json.dumps(json.loads((path / CONFIG_FILE).read_text()), indent=1))
