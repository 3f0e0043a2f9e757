"""Export fragments: each shard exports its own samples; finalisation merges the fragments.

A fragment is exactly what `write_exports` (the single-pass writers) makes from one shard's
samples: the format folders and a manifest.json. Finalisation then never re-reads a sample;
it merges the fragments of all shards, in shard (= index) order, into what `write_exports`
would have made from all samples at once, byte for byte (tested for every format). That
holds because nothing a writer emits depends on samples of other shards except what the
rules below rebuild:

* splits: `write_exports` assigns them over the job's planned total (`num_images`), so a
  shard's samples already sit in the splits of the whole job (`shared.formats.export.splits`);
* per-sample files (a file whose stem is one of the fragment's sample stems, the rule the
  manifest uses, and the HF masks `masks/<stem>_semantic.png` / `_instances.png`) are moved
  into place unchanged;
* shared files are merged by a rule per kind, streaming (a fragment at a time):
  COCO instances_<split>.json (images and annotations appended; annotation ids, numbered
  1.. over the whole job in (index, annotation) order, are the fragment's own ids plus the
  annotations of the shards before it), YOLO data.yaml (the union of the splits), VOC
  ImageSets lists (lines appended), HF metadata.parquet (rows streamed through the writer's
  own `MetadataWriter`, whose row groups have a fixed size), masks/classes.json (the same in
  every fragment), WebDataset tars (samples re-cut into tars of the single-pass size);
  a shared file without a rule is refused, so a new writer file cannot be silently lost;
* manifest.json is streamed: samples from the fragments' manifests, the file table from the
  merged folders.

So finalisation costs a download per shard (not four per sample), moves and appends, and no
list of the whole dataset is held in memory: one fragment's manifest or COCO document, one
HF row group per split, and a few paths per shard.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from shared.formats import layout
from shared.formats.export import files
from shared.formats.export.manifest import manifest_document
from shared.formats.spec import EXPORT_FORMATS, JobSpec

FRAGMENT_SAMPLES = "samples"  # the fragment manifest's list of sample entries
FRAGMENT_INFO = "fragment.json"  # what made the fragment; finalisation merges only current ones
# 2: splits over the job's total (before: over the shard's own samples), HF masks, COCO ids.
FRAGMENT_VERSION = 2


class FragmentError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers
def _walk(folder: Path) -> Iterator[Path]:
    """Files under `folder`, depth first with each folder's entries sorted by name: the order
    of `sorted(Path.rglob(...))` without listing the whole tree at once."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield from _walk(Path(e.path))
        elif e.is_file(follow_symlinks=False) and not e.name.startswith(".tmp-"):
            yield Path(e.path)


walk_files = _walk


def _indented(value: Any, depth: int) -> str:
    """`value` as `files.dumps_json(..., indent=2)` renders it `depth` levels deep."""
    text = json.dumps(value, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=False)
    return text.replace("\n", "\n" + "  " * depth)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _write_around(out: TextIO, template: str, blocks: dict[str, Any]) -> None:
    """Write `template` with each placeholder (a JSON string token) replaced by its block:
    a callable that writes to `out`, called in template order."""
    rest = template
    while True:
        found = [(rest.find(token), token) for token in blocks if token in rest]
        if not found:
            out.write(rest)
            return
        pos, token = min(found)
        out.write(rest[:pos])
        blocks[token](out)
        rest = rest[pos + len(token):]


# ------------------------------------------------------------------------- fragments
class Fragment:
    """One shard's export folder (as `write_exports` left it); or, unpacked from a stored
    fragment, a folder of its shared files beside the fragment's `archive`, from which the
    per-sample files are read when merged (never written out one by one)."""

    def __init__(self, root: Path, archive: Path | None = None):
        self.root = Path(root)
        self.archive = Path(archive) if archive else None
        self._manifest: dict | None = None
        self.rebuilt = False  # made from the samples at finalisation (no current stored fragment)

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            self._manifest = json.loads((self.root / layout.MANIFEST_FILE).read_text())
        return self._manifest

    def release(self) -> None:
        self._manifest = None

    def stems(self) -> set[str]:
        return {layout.sample_stem(s["index"]) for s in self.manifest[FRAGMENT_SAMPLES]}

    def num_annotations(self) -> int:
        return sum(s["num_annotations"] for s in self.manifest[FRAGMENT_SAMPLES])

    def info(self) -> dict | None:
        path = self.root / FRAGMENT_INFO
        return json.loads(path.read_text()) if path.is_file() else None

    def is_current(self, spec: JobSpec) -> bool:
        """Made by this version's writers for this job's spec (a fragment of an older version
        assigned splits within its shard and must be rebuilt from the samples)."""
        info = self.info()
        return bool(info) and info.get("fragment_version") == FRAGMENT_VERSION \
            and self.manifest.get("spec") == spec.model_dump(mode="json")

    def has_format(self, fmt: str) -> bool:
        return (self.root / fmt).is_dir()

    def files(self, fmt: str, stems: set[str], archive) -> Iterator[tuple[str, bool, Path | bytes]]:  # noqa: ANN001
        """(path relative to the format folder, whether it is one sample's own file, its file
        or bytes) in walk order; `archive`: this fragment's open zip (None for a folder)."""
        if archive is None:
            if (self.root / fmt).is_dir():
                for path in _walk(self.root / fmt):
                    rel = path.relative_to(self.root / fmt).as_posix()
                    yield rel, _sample_file(fmt, rel, path.stem, stems), path
            return
        prefix = fmt + "/"
        for info in archive.infolist():  # packed in walk order
            if info.filename.startswith(prefix) and not info.is_dir():
                rel = info.filename[len(prefix):]
                if _sample_file(fmt, rel, _stem(rel), stems):
                    yield rel, True, archive.read(info)
                else:  # shared files were unpacked
                    yield rel, False, self.root / info.filename

    def open_archive(self):  # noqa: ANN201
        import contextlib
        import zipfile

        return zipfile.ZipFile(self.archive) if self.archive else contextlib.nullcontext()


class FolderSink:
    """Where a merge puts each sample's own files by default: under `root`, as the single-pass
    writers leave them (finalisation streams them into archives instead: `ArchiveSink`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def add(self, fmt: str, rel: str, source: Path | bytes) -> None:
        dest = self.root / fmt / rel
        if dest.exists():
            raise FragmentError(f"{fmt}/{rel} is in two fragments")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            os.replace(source, dest)
        else:
            dest.write_bytes(source)

    def subdirs(self, fmt: str, rel_dir: str) -> set[str]:
        return set()  # every file is on disk under root

    def listing(self, fmt: str, rel_dir: str) -> Iterator[tuple[str, int, str]]:
        return iter(())


def _stem(rel: str) -> str:
    """`Path(rel).stem` without pathlib, which interns every path part it parses (the interned
    table then grows with the number of files merged: ~90 MB at 100k samples)."""
    return os.path.splitext(rel.rpartition("/")[2])[0]


def _sample_file(fmt: str, rel: str, name_stem: str, stems: set[str]) -> bool:
    """Whether an export file belongs to one sample (moved as it is) rather than to many."""
    if name_stem in stems:
        return True
    if fmt == "hf" and "/masks/" in f"/{rel}":  # hf/<split>/masks/<stem>_<kind>.png
        base, _, kind = name_stem.rpartition("_")
        return kind in ("semantic", "instances") and base in stems
    return False


def _part(fragment: Fragment, rel: str) -> Path | None:
    path = fragment.root / rel
    return path if path.is_file() else None


def pack_fragment(root: Path) -> bytes:
    """A shard's exports (everything `write_exports` wrote under `root`, not its samples) as
    one stored (uncompressed: images are compressed already) zip, entries sorted, with
    `fragment.json` naming the fragment version."""
    import io
    import zipfile

    def entry(name: str) -> zipfile.ZipInfo:  # fixed timestamps: same samples, same bytes
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        return info

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(entry(FRAGMENT_INFO), files.dumps_json({"fragment_version": FRAGMENT_VERSION}))
        for path in _walk(root):
            rel = path.relative_to(root)
            if rel.parts[0] != layout.SAMPLES_DIR and rel.as_posix() != FRAGMENT_INFO:
                zf.writestr(entry(rel.as_posix()), path.read_bytes())
    return buf.getvalue()


def unpack_fragment(data: bytes, dest: Path) -> Fragment:
    """A stored fragment: kept as one file (`<dest>.zip`), with only its shared files, its
    manifest and its WebDataset tars unpacked under `dest`; the per-sample files stay in the
    archive until the merge reads them (unpacking them would create thousands of files)."""
    import io
    import zipfile

    dest = Path(dest)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        for name in names:
            if name.startswith("/") or ".." in name.split("/"):
                raise FragmentError(f"fragment entry {name!r} leaves its folder")
        if layout.MANIFEST_FILE not in names:
            raise FragmentError("fragment without manifest.json")
        manifest = json.loads(zf.read(layout.MANIFEST_FILE))
        stems = {layout.sample_stem(s["index"]) for s in manifest.get(FRAGMENT_SAMPLES, [])}
        formats: set[str] = set()
        for info in zf.infolist():
            fmt, _, rel = info.filename.partition("/")
            if rel and fmt not in formats:  # the format is there, if only in the archive
                (dest / fmt).mkdir(parents=True, exist_ok=True)
                formats.add(fmt)
            if info.is_dir() or (rel and fmt not in _FOLDER_MERGES and _sample_file(fmt, rel, _stem(rel), stems)):
                continue
            zf.extract(info, dest)
    archive = dest.with_name(dest.name + ".zip")
    archive.write_bytes(data)  # a scratch copy for this finalisation (no fsync: nothing to recover)
    return Fragment(dest, archive)


# ------------------------------------------------------------------- merge rules
def _merge_coco(parts: Sequence[Path], dest: Path, offsets: Sequence[int]) -> None:
    """instances_<split>.json: the first part's document with every part's images and
    annotations; a part's annotation ids (1.. within its shard, over all its splits) are
    shifted by `offsets[k]`, the annotations of the shards before it, which gives the ids
    `write_coco` gives over the whole job (1.. in (sample index, annotation) order)."""
    first = json.loads(parts[0].read_text())
    skeleton = {**first, "images": "\x00images\x00", "annotations": "\x00annotations\x00"}
    template = files.dumps_json(skeleton)

    def annotations(out: TextIO) -> None:
        out.write("[")
        n = 0
        for part, offset in zip(parts, offsets, strict=True):
            for ann in json.loads(part.read_text())["annotations"]:
                n += 1
                out.write(("," if n > 1 else "") + _compact({**ann, "id": ann["id"] + offset}))
        out.write("]")

    def images(out: TextIO) -> None:
        out.write("[")
        k = 0
        for part in parts:
            for image in json.loads(part.read_text())["images"]:
                k += 1
                out.write(("," if k > 1 else "") + _compact(image))
        out.write("]")

    tokens = {_compact("\x00annotations\x00"): annotations, _compact("\x00images\x00"): images}
    with _open_text(dest) as out:
        _write_around(out, template, tokens)


def _merge_lines(parts: Sequence[Path], dest: Path) -> None:
    with open(_tmp(dest), "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    os.replace(_tmp(dest), dest)


def _merge_same(parts: Sequence[Path], dest: Path) -> None:
    data = parts[0].read_bytes()
    for part in parts[1:]:
        if part.read_bytes() != data:
            raise FragmentError(f"{dest.name}: fragments disagree on a file that must be the same in all")
    files.atomic_write_bytes(dest, data)


def _merge_yolo_yaml(parts: Sequence[Path], dest: Path, categories: list[str]) -> None:
    import yaml

    from shared.formats.export.yolo import data_yaml

    splits: set[str] = set()
    for part in parts:
        splits |= {k for k in yaml.safe_load(part.read_text()) if k not in ("nc", "names")}
    files.atomic_write_text(dest, data_yaml(categories, sorted(splits)))


def _merge_parquet(parts: Sequence[Path], dest: Path, categories: list[str]) -> None:
    """Rows streamed, a row group at a time, through the HF writer's own `MetadataWriter`
    (rows read back from parquet are rebuilt into tables as the writer builds them, so the
    same rows give the same bytes)."""
    from shared.formats.export.hf import MetadataWriter, read_metadata_rows

    writer = MetadataWriter(dest, categories)
    for part in parts:
        for row in read_metadata_rows(part):
            writer.add(row)
    writer.close()


def _merge_webdataset(dirs: Sequence[Path], dest: Path) -> None:
    from shared.formats.export.webdataset import merge_webdataset

    merge_webdataset(dirs, dest)


# Formats whose files hold many samples each (tars): merged as whole folders.
_FOLDER_MERGES = {"webdataset": _merge_webdataset}


def _rule(fmt: str, rel: str, categories: list[str], offsets: Sequence[int]):  # noqa: ANN202
    """The merge function of a shared file `rel` (relative to its format folder); `offsets`:
    the annotations before each part's shard."""
    name = Path(rel).name
    if fmt == "coco" and rel.startswith("annotations/") and name.endswith(".json"):
        return lambda parts, dest: _merge_coco(parts, dest, offsets)
    if fmt == "yolo" and name == "data.yaml":
        return lambda parts, dest: _merge_yolo_yaml(parts, dest, categories)
    if fmt == "voc" and rel.startswith("ImageSets/") and name.endswith(".txt"):
        return _merge_lines
    if fmt == "hf" and name == "metadata.parquet":
        return lambda parts, dest: _merge_parquet(parts, dest, categories)
    if fmt == "masks" and name == "classes.json":
        return _merge_same
    raise FragmentError(f"{fmt}/{rel}: a shared export file without a merge rule (add one in {__name__})")


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}")


class _open_text:
    """A text file written under a temporary name and renamed into place on success."""

    def __init__(self, dest: Path):
        self.dest = dest
        dest.parent.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> TextIO:
        self.f = open(_tmp(self.dest), "w", encoding="utf-8", newline="")
        return self.f

    def __exit__(self, exc_type, *rest) -> None:  # noqa: ANN001
        self.f.close()
        if exc_type is None:
            os.replace(_tmp(self.dest), self.dest)
        else:
            _tmp(self.dest).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ merge
def merge_fragments(root: Path, spec: JobSpec, fragments: Sequence[Fragment], sink=None) -> Path:  # noqa: ANN001
    """Build in `root` what `write_exports(root, spec, all records)` builds, from the shards'
    fragments (in shard order; their files are moved, so they are used up). Each sample's own
    files go to `sink` (default: `FolderSink(root)`, files under `root`; finalisation passes an
    `shared.formats.export.archives.ArchiveSink`). Returns the manifest's path (written last)."""
    root = Path(root)
    sink = sink or FolderSink(root)
    (root / layout.MANIFEST_FILE).unlink(missing_ok=True)
    categories = [c.name for c in spec.classes]
    formats = [f for f in EXPORT_FORMATS if f in spec.export.formats]
    # shared file -> its parts, with the annotations of the shards before each part's shard
    shared: dict[tuple[str, str], list[tuple[Path, int]]] = {}
    annotations_before = 0
    for fragment in fragments:
        stems = fragment.stems()
        with fragment.open_archive() as archive:
            for fmt in formats:
                if fmt in _FOLDER_MERGES:
                    continue
                if not fragment.has_format(fmt):
                    if stems:  # a fragment whose samples were all dropped may have no files
                        raise FragmentError(f"fragment {fragment.root.name} has no {fmt} folder")
                    continue
                for rel, own, source in fragment.files(fmt, stems, archive):
                    if own:  # a sample's own file: moved as it is
                        sink.add(fmt, rel, source)
                    else:
                        shared.setdefault((fmt, rel), []).append((source, annotations_before))
        if fragment.archive:
            fragment.archive.unlink(missing_ok=True)  # read: used up like the moved files
        annotations_before += fragment.num_annotations()
        fragment.release()
    for fmt in formats:
        (root / fmt).mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt in _FOLDER_MERGES:
            _FOLDER_MERGES[fmt]([f.root / fmt for f in fragments], root / fmt)
    for (fmt, rel), parts in sorted(shared.items()):
        dest = root / fmt / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        _rule(fmt, rel, categories, [offset for _, offset in parts])([path for path, _ in parts], dest)
    return write_merged_manifest(root, spec, fragments, formats, sink)


def write_merged_manifest(root: Path, spec: JobSpec, fragments: Sequence[Fragment], formats: Sequence[str],
                          sink=None) -> Path:  # noqa: ANN001
    """manifest.json with the bytes `write_manifest` gives, streamed: the samples come from the
    fragments' manifests, the file table from the merged folders and what `sink` received."""
    sink = sink or FolderSink(root)
    splits: Counter[str] = Counter()
    for fragment in fragments:
        splits.update(s["split"] for s in fragment.manifest[FRAGMENT_SAMPLES])
        fragment.release()
    skeleton = manifest_document(root, spec, [], {}, [])
    skeleton.update(samples="\x00samples\x00", files="\x00files\x00", splits=dict(splits))
    template = files.dumps_json(skeleton, indent=2)

    def samples(out: TextIO) -> None:
        n = 0
        for fragment in fragments:
            for entry in fragment.manifest[FRAGMENT_SAMPLES]:
                out.write(("[\n" if n == 0 else ",\n") + "    " + _indented(entry, 2))
                n += 1
            fragment.release()
        out.write("\n  ]" if n else "[]")

    def table(out: TextIO) -> None:
        n = 0
        for fmt in sorted(formats):
            for rel, entry in _file_table(root, fmt, sink):
                out.write(("{\n" if n == 0 else ",\n") + "    " + _compact(f"{fmt}/{rel}") + ": " + _indented(entry, 2))
                n += 1
        out.write("\n  }" if n else "{}")

    dest = root / layout.MANIFEST_FILE
    with _open_text(dest) as out:
        _write_around(out, template, {_compact("\x00samples\x00"): samples, _compact("\x00files\x00"): table})
    return dest


def _file_table(root: Path, fmt: str, sink, rel_dir: str = "") -> Iterator[tuple[str, dict]]:  # noqa: ANN001
    """(path in the format folder, {bytes, sha256}) of every file of format `fmt`, on disk under
    `root` or received by `sink`, in the order `_walk` gives over the single-pass folder (each
    directory's entries by name, directories entered where they sort)."""
    import heapq

    folder = root / fmt / rel_dir
    entries: list[tuple[str, str]] = []
    if folder.is_dir():
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    entries.append((e.name, "dir"))
                elif e.is_file(follow_symlinks=False) and not e.name.startswith(".tmp-"):
                    entries.append((e.name, "file"))
    on_disk = {name for name, _ in entries}
    entries += [(name, "dir") for name in sink.subdirs(fmt, rel_dir) if name not in on_disk]
    entries.sort()
    received = ((name, (size, sha)) for name, size, sha in sink.listing(fmt, rel_dir))
    previous = None
    for name, what in heapq.merge(entries, received, key=lambda item: item[0]):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        if name == previous:
            raise FragmentError(f"{fmt}/{rel} is in two fragments")
        previous = name
        if what == "dir":
            yield from _file_table(root, fmt, sink, rel)
        elif what == "file":
            path = folder / name
            yield rel, {"bytes": path.stat().st_size, "sha256": files.sha256_file(path)}
        else:
            yield rel, {"bytes": what[0], "sha256": what[1]}
