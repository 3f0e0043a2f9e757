"""`dsgen shapes ...`: the shapes world (real labeled renders) and its builtin model."""
from __future__ import annotations

from pathlib import Path

import click

from worker.cli import UserError, cli


@cli.group()
def shapes() -> None:
    """The shapes world: render real labeled sets, train / export the shapes model."""


@shapes.command("render")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="output folder")
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1), help="number of images")
@click.option("--seed", default=0, show_default=True, type=int, help="stream seed (scene i = f(seed, i))")
@click.option("--size", default=32, show_default=True, type=click.IntRange(min=16), help="image side in pixels")
@click.option("--formats", default="coco", show_default=True, help="comma-separated: coco,yolo,voc,hf,masks")
@click.option("--overwrite", is_flag=True, help="allow writing into a non-empty folder")
def render_cmd(out: Path, n: int, seed: int, size: int, formats: str, overwrite: bool) -> None:
    """Render N real shapes images with exact labels, in the project's dataset layout."""
    from rich.progress import Progress

    from shared.formats.export import WRITERS
    from shared.shapes.dataset import write_real_dataset

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in WRITERS]
    if bad:
        raise UserError(f"--formats: unknown {', '.join(bad)}; choose from {', '.join(sorted(WRITERS))}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out: {out} is not empty; pass --overwrite to write into it")
    with Progress(transient=True) as bar:
        task = bar.add_task("rendering", total=n)
        write_real_dataset(out, n, seed=seed, size=size, formats=fmts, progress=lambda k: bar.update(task, completed=k))
    click.echo(f"wrote {n} images to {out} ({', '.join(fmts)})")


@shapes.command("train")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="run folder (checkpoints, log)")
@click.option("--steps", default=3000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3e-4, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "small", "base"]))
@click.option("--max-minutes", default=None, type=float, help="stop (after a checkpoint) after this many minutes")
@click.option("--threads", default=None, type=int, help="torch CPU threads (1 is robust on a shared machine)")
@click.option("--attn-loss", default=0.05, show_default=True, type=float,
              help="weight of the attention localisation loss (0: off)")
@click.option("--min-snr", default=0.0, show_default=True, type=float, help="min-SNR-gamma weighting (0: off)")
@click.option("--resume", is_flag=True, help="continue from DIR/latest.pt")
@click.option("--export", "export", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="after training, write the EMA model as a diffusers folder here")
def train_cmd(out, steps, batch_size, lr, seed, preset, max_minutes, threads, attn_loss, min_snr, resume, export) -> None:
    """Train the pixel-space shapes text-to-image model (CPU or GPU), resumable."""
    from worker.shapes.train import TrainConfig, train

    tc = TrainConfig(out=str(out), steps=steps, batch_size=batch_size, lr=lr, seed=seed, preset=preset,
                     max_minutes=max_minutes, threads=threads, bf16=False,
                     attn_loss=attn_loss, min_snr=min_snr)
    try:
        trainer = train(tc, resume=resume)
    except FileExistsError as err:
        raise UserError(str(err)) from None
    if export:
        trainer.export(export)
        click.echo(f"exported EMA weights (step {trainer.step}) to {export}")


@shapes.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="latest.pt or ema-<step>.pt of a training run")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
def export_cmd(checkpoint: Path, out: Path) -> None:
    """Write a checkpoint's EMA weights as a diffusers folder (attention scales folded in)."""
    from worker.shapes.train import export_checkpoint

    export_checkpoint(checkpoint, out)
    click.echo(f"exported {checkpoint} to {out}")
