"""`dsgen run SPEC --out DIR`: one job on this machine, with a progress bar."""
from __future__ import annotations

import time
from pathlib import Path

import click

from shared.formats.spec import SpecError, load_spec
from worker.cli import UserError, cli


@cli.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="dataset folder (default: out/<spec name>); an interrupted run resumes here")
@click.option("--overwrite", is_flag=True,
              help="replace an existing dataset in --out (only a folder dsgen made; checked before anything is deleted)")
@click.option("--num-images", type=int, default=None, help="override the spec's num_images")
def run_command(spec_path: Path, out: Path | None, overwrite: bool, num_images: int | None) -> None:
    """Generate a labeled dataset from a job SPEC (YAML or JSON)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    try:
        spec = load_spec(spec_path)
        if num_images is not None:
            from shared.formats.spec import parse_spec

            spec = parse_spec({**spec.model_dump(mode="json"), "num_images": num_images})
    except SpecError as err:
        raise UserError(str(err)) from None
    out = out or Path("out") / spec.name
    from worker.engine.local_run import check_folder, run_to_folder

    try:
        check_folder(spec, out.resolve(), overwrite)  # before the bar: refuse early, cleanly
    except SpecError as err:
        raise UserError(str(err)) from None

    started = time.perf_counter()
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"{spec.name}", total=spec.num_images, rate="")

        def on_phase(text: str) -> None:  # "loading model ..." while the bar cannot move yet
            progress.update(task, description=text)
        state = {"first": None, "t0": None}

        def on_sample(done: int, total: int, _seconds: float) -> None:
            now = time.perf_counter()
            if state["first"] is None:
                state["first"], state["t0"] = done, now
            made = done - state["first"]
            rate = f"{made / (now - state['t0']):.2f} img/s" if made and now > state["t0"] else ""
            progress.update(task, completed=done, rate=rate)

        try:
            report = run_to_folder(spec, out, overwrite=overwrite, on_sample=on_sample, on_phase=on_phase)
        except SpecError as err:
            raise UserError(str(err)) from None
        except OSError as err:  # a folder that cannot be written: the user's to fix
            raise UserError(f"--out {out}: {err.strerror or err}") from None
    click.echo(
        f"{report.out}: {report.generated} generated, {report.reused} reused, "
        f"manifest {report.manifest.name} ({time.perf_counter() - started:.1f}s)"
    )
