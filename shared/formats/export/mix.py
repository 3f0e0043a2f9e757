"""Real + synthetic training sets (DA-Fusion's few_shot_dataset): each real sample is replaced
by one of its synthetic variants with probability p, else kept.

`mix_folders(real, synthetic, out, p, seed)` reads two dsgen dataset folders (the real one,
e.g. from `dsgen shapes render` or an export; the synthetic one from `method: augment`, whose
records name their source image), writes `out` as a dsgen dataset folder whose records say
whether each sample is synthetic and of which real sample (`parameters.mix`), a
`lineage.jsonl` beside it, and every export format the synthetic job's spec asks for (COCO
images carry the lineage too). The draw per real sample is keyed by (seed, index): the same
arguments give the same list. No torch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from shared.formats import layout
from shared.formats.records import DROPPED, SampleRecord
from shared.formats.spec import JobSpec, SpecError

LINEAGE_FILE = "lineage.jsonl"


def _records(root: Path, field: str) -> list[SampleRecord]:
    if not (root / layout.SAMPLES_DIR).is_dir():
        raise SpecError(f"{field}: {root} is not a dsgen dataset folder (no {layout.SAMPLES_DIR}/)", field=field)
    out = []
    for rec in sorted((root / layout.SAMPLES_DIR).glob(f"*/{layout.RECORD_FILE}")):
        out.append(SampleRecord.model_validate_json(rec.read_text()))
    if not out:
        raise SpecError(f"{field}: {root} holds no samples", field=field)
    return out


def source_key(record: SampleRecord) -> str:
    """The real sample a variant came from, as its image path in the real folder."""
    return record.parameters["augment"]["source_image"]


def mix_folders(real: Path, synthetic: Path, out: Path, p: float = 0.5, seed: int = 0) -> dict:
    if not 0.0 <= p <= 1.0:
        raise SpecError("--p: a probability in [0, 1]", field="--p")
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"--out: {out} is not empty; pick a new folder", field="--out")
    reals = _records(real, "--real")
    synth = [r for r in _records(synthetic, "--synthetic") if "augment" in r.parameters and not r.quality.get(DROPPED)]
    if not synth:
        raise SpecError(f"--synthetic: {synthetic} has no samples of method augment (they name their source image)",
                        field="--synthetic")
    spec = JobSpec.model_validate_json((synthetic / layout.SPEC_FILE).read_text())
    variants: dict[str, list[SampleRecord]] = {}
    for r in synth:
        variants.setdefault(source_key(r), []).append(r)
    names = [f"{layout.SAMPLES_DIR}/{layout.sample_dir_name(r.index)}/{r.files.image}" for r in reals]
    unknown = sorted(set(variants) - set(names))
    if unknown:
        raise SpecError(f"--synthetic: its variants come from {unknown[0]}, which is not in --real {real}; give the "
                        "real folder the augment job read", field="--synthetic")
    records, lineage = [], []
    for k, (r, name) in enumerate(zip(reals, names)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, r.index, 0x3A1]))
        options = variants.get(name, [])
        use = options[int(rng.integers(len(options)))] if options and rng.random() < p else None
        src_root, chosen = (synthetic, use) if use is not None else (real, r)
        mix = {"synthetic": use is not None, "source": name,
               "variant_index": None if use is None else use.index}
        rec = chosen.model_copy(update={"index": k, "parameters": {**chosen.parameters, "mix": mix}})
        dst = layout.sample_dir(out, k)
        dst.mkdir(parents=True, exist_ok=True)
        for fname in (chosen.files.image, chosen.files.semantic, chosen.files.instances):
            if fname and (layout.sample_dir(src_root, chosen.index) / fname).is_file():
                shutil.copyfile(layout.sample_dir(src_root, chosen.index) / fname, dst / fname)
        (dst / layout.RECORD_FILE).write_text(rec.model_dump_json(indent=1) + "\n")
        records.append(rec)
        lineage.append({"index": k, **mix})
    (out / LINEAGE_FILE).write_text("".join(json.dumps(x) + "\n" for x in lineage))
    mixed_spec = spec.model_copy(update={"num_images": len(records), "name": f"{spec.name}-mix"})
    (out / layout.SPEC_FILE).write_text(json.dumps(mixed_spec.model_dump(mode="json"), sort_keys=True, indent=1) + "\n")
    from shared.formats.export import write_exports

    write_exports(out, mixed_spec, records)
    n_syn = sum(x["synthetic"] for x in lineage)
    return {"samples": len(records), "synthetic": n_syn, "real": len(records) - n_syn, "out": str(out)}
