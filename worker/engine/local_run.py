"""`dsgen run`: a job into a local folder, resumable, never destroying earlier work.

Crash safety comes from ordering and atomic renames: every file of a sample is written to
a temporary name and renamed into place, the sample's record.json last. A sample counts as
done only when its record exists; the exports are rebuilt from the records, and
manifest.json, written last, marks the dataset complete. A re-run of the same command
therefore continues where the last one stopped and ends with the same files.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.engine import Engine, sample_files, write_sample_files
from shared.formats import layout
from shared.formats.export.files import atomic_write_bytes
from shared.formats.records import SampleRecord
from shared.formats.spec import JobSpec, SpecError


class OutputFolderError(SpecError):
    def __init__(self, message: str):
        super().__init__(message, field="--out")


@dataclass
class RunReport:
    out: Path
    generated: int
    reused: int
    manifest: Path


def canonical_spec_json(spec: JobSpec) -> str:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, indent=1) + "\n"


def made_by_dsgen(out: Path) -> bool:
    """A folder dsgen wrote: it holds the run's spec.json or a dataset manifest."""
    return (out / layout.SPEC_FILE).is_file() or (out / layout.MANIFEST_FILE).is_file()


def _check_parents(out: Path) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputFolderError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
            return


def check_folder(spec: JobSpec, out: Path, overwrite: bool) -> bool:
    """Raise if using `out` would lose data; True when it holds this spec's run (resume).

    `--overwrite` replaces only a folder dsgen made (spec.json or manifest.json in it) or an
    empty one: a user's own folder is never deleted."""
    _check_parents(out)
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} exists and is not a folder")
    if overwrite:
        if any(out.iterdir()) and not made_by_dsgen(out):
            raise OutputFolderError(
                f"--out {out} was not made by dsgen (no {layout.SPEC_FILE} or {layout.MANIFEST_FILE}); "
                "--overwrite only replaces dsgen datasets: choose another --out, or empty it yourself"
            )
        return False
    spec_file = out / layout.SPEC_FILE
    if spec_file.is_file():
        if spec_file.read_text() != canonical_spec_json(spec):
            raise OutputFolderError(
                f"--out {out} holds a dataset made from a different spec; "
                "use another --out, or --overwrite to replace it"
            )
        return True
    if any(out.iterdir()):
        raise OutputFolderError(f"--out {out} exists and is not a dsgen dataset; use another --out")
    return False


def prepare_folder(spec: JobSpec, out: Path, overwrite: bool) -> None:
    """Create `out`, or accept it for resuming; refuse anything that would lose data."""
    if check_folder(spec, out, overwrite):
        return
    if out.exists() and overwrite and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / layout.SPEC_FILE, canonical_spec_json(spec).encode())


def check_spec_for_model(spec: JobSpec) -> None:
    """What the model's own metadata (dsgen.json, unet config) says it cannot do, before any
    weights load: words outside its vocabulary, sizes, attention resolutions."""
    from shared.formats.model_meta import check_spec_fits_model, model_meta

    meta = model_meta(spec.model.id)
    errors = check_spec_fits_model(spec, meta) if meta is not None else []
    if errors:
        field, message = errors[0]
        raise SpecError(f"{field}: {message}", field=field)


def open_session(spec: JobSpec, todo: list[int], session_factory: Callable[[JobSpec], Engine] | None) -> Engine:
    """The engine session, with everything checked that can be checked before a sample is
    made (model, adaptor, source images, captions file, attention resolutions)."""
    from worker.engine.session import EngineSession

    session = (session_factory or EngineSession)(spec)
    if callable(getattr(session, "capture_config", None)):
        session.capture_config()  # attention resolutions of this UNet at this size
    if todo and callable(getattr(session, "plan", None)):
        session.plan(todo[0])  # reads the captions file, the source of image2image
    return session


def completed_indexes(spec: JobSpec, out: Path) -> dict[int, SampleRecord]:
    done = {}
    for i in range(spec.num_images):
        path = layout.record_path(out, i)
        if path.is_file():
            try:
                done[i] = SampleRecord.model_validate_json(path.read_bytes())
            except ValueError:
                continue  # a torn record cannot happen with atomic writes, but never trust one
    return done


def with_llm_prompts(spec: JobSpec, out: Path, overwrite: bool) -> JobSpec:
    """prompts.source llm: the prompts stored in `out` by an earlier run of this spec (a re-run
    reads the same ones), else freshly written; they are saved with the spec (spec.json)."""
    if spec.prompts.source != "llm" or spec.prompts.llm.generated:
        return spec
    from shared.formats.llm_prompts import resolve_llm_prompts, without_generated

    stored_file = out / layout.SPEC_FILE
    if not overwrite and stored_file.is_file():
        try:
            stored = JobSpec.model_validate_json(stored_file.read_text())
        except ValueError:
            stored = None
        if stored is not None and stored.prompts.llm and stored.prompts.llm.generated and \
                canonical_spec_json(without_generated(stored)) == canonical_spec_json(spec):
            return stored
    from worker.engine.llm_local import writer_for

    return resolve_llm_prompts(spec, writer_for(spec))


def run_to_folder(
    spec: JobSpec,
    out: Path,
    overwrite: bool = False,
    on_sample: Callable[[int, int, float], None] | None = None,
    session_factory: Callable[[JobSpec], Engine] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> RunReport:
    """Generate the missing samples of `spec` into `out`, then (re)write the exports.

    `on_sample(done, total, seconds)` is called after each sample for progress display,
    `on_phase(text)` when a slow step starts (loading the model) and when generation starts.
    The model, adaptor and sources are loaded before `out` is touched, so a run that cannot
    start (unknown model, missing file) never deletes an `--overwrite` folder.
    """
    from shared.formats.export import write_exports

    out = Path(out).resolve()
    spec = with_llm_prompts(spec, out, overwrite)
    resume = check_folder(spec, out, overwrite)
    fresh = not resume
    records = completed_indexes(spec, out) if resume else {}
    reused = len(records)
    todo = [i for i in range(spec.num_images) if i not in records]
    # Everything that can fail on the spec fails here, before a file is deleted or written.
    check_spec_for_model(spec)
    if on_phase is not None and todo:
        on_phase(f"loading model {spec.model.id}")
    session = open_session(spec, todo, session_factory) if todo else None
    prepare_folder(spec, out, overwrite)
    if on_phase is not None:
        on_phase(spec.name)
    if on_sample is not None:
        on_sample(len(records), spec.num_images, 0.0)
    try:
        if todo:
            for sample in session.generate(todo):
                write_sample_files(layout.sample_dir(out, sample.record.index), sample_files(sample))
                records[sample.record.index] = sample.record
                if on_sample is not None:
                    on_sample(len(records), spec.num_images, sample.seconds)
    except SpecError:
        # A spec the model cannot run found only while generating, before any sample exists:
        # leave no folder behind, or the fixed spec would be refused there.
        if fresh and not records:
            shutil.rmtree(out, ignore_errors=True)
        raise
    manifest = write_exports(out, spec, [records[i] for i in sorted(records)])
    return RunReport(out, len(todo), reused, manifest)
