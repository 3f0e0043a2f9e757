"""Source archives: real images/masks a method reads, uploaded once, named by jobs (no torch).

`POST /v1/sources` stores an archive (zip, tar, tar.gz) after checking it *before* anything is
written: its size, its format, every member's path (no absolute paths, no `..`, no links or
devices), the number of members, the unpacked size and the compression ratio (zip bombs).
A job names it with `source: {upload: <id>}`; the worker downloads it and extracts it with
the same checks (`extract_archive`), member by member, never with `extractall`.

Objects: `sources/<id>/archive` and `sources/<id>/meta.json` (tenant, format, sizes). The id is
random (uuid4 hex); a tenant sees, and jobs may name, only its own uploads.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import stat
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared.errors import DomainError, InvalidRequest, NotFound
from shared.formats.concepts import CONCEPT_FILE, concept_summary, foreign_concept

SOURCES_PREFIX = "sources/"
UPLOAD_REF = "upload:"  # a model-like reference to an upload (e.g. a segmenter folder)


class SourceTooLarge(DomainError):
    status = 413


class SourceView(BaseModel):
    id: str
    format: str  # the layout found: dsgen, voc, coco, masks, images, segmenter, controlnet, concept
    archive: str  # zip | tar
    bytes: int
    unpacked_bytes: int
    files: int
    created_at: str
    concept: dict | None = None  # a concept folder's tokens and base model (shared.formats.concepts)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 << 20
    max_unpacked_bytes: int = 2 << 30
    max_files: int = 50_000
    max_ratio: float = 200.0  # unpacked / packed, per zip member (> 1 MiB) and overall

    @classmethod
    def from_settings(cls, settings: Any) -> "Limits":
        return cls(settings.max_source_bytes, settings.max_source_unpacked_bytes, settings.max_source_files,
                   settings.max_source_ratio)


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative posix path
    size: int


def archive_key(upload_id: str) -> str:
    return f"{SOURCES_PREFIX}{_check_id(upload_id)}/archive"


def meta_key(upload_id: str) -> str:
    return f"{SOURCES_PREFIX}{_check_id(upload_id)}/meta.json"


def _check_id(upload_id: str) -> str:
    try:
        return uuid.UUID(hex=str(upload_id)).hex
    except ValueError:
        raise InvalidRequest(f"upload: {upload_id!r} is not an upload id (32 hex digits)", field="upload") from None


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(f"archive: {message}", field="archive")


def _safe_name(raw: str) -> str | None:
    """A relative posix path inside the archive, or raise; None for entries to skip (dirs)."""
    if "\x00" in raw:
        raise _bad(f"member name {raw!r} contains a NUL byte")
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _bad(f"member {raw!r} has an absolute path; archives may only hold relative paths")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _bad(f"member {raw!r} points outside the archive ('..'); refusing it")
    if any(len(p) > 255 for p in parts):
        raise _bad(f"member {raw[:80]!r}... has a path component longer than 255 characters")
    if not parts or name.endswith("/"):
        return None
    return posixpath.join(*parts)


def _kind(data: bytes) -> str:
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return "zip"
    if data[:2] == b"\x1f\x8b" or data[257:262] == b"ustar":
        return "tar"
    raise _bad("not a zip, tar or tar.gz archive (send the file itself, e.g. --data-binary @masks.zip)")


def _zip_members(data: bytes, limits: Limits) -> list[Member]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise _bad(f"not a readable zip ({err})") from None
    out = []
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _bad(f"member {info.filename!r} is a symbolic link; archives may only hold files")
        if info.flag_bits & 0x1:
            raise _bad(f"member {info.filename!r} is encrypted")
        name = _safe_name(info.filename)
        if name is None or info.is_dir():
            continue
        if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise SourceTooLarge(
                f"archive: member {info.filename!r} unpacks {info.file_size / max(1, info.compress_size):.0f}x its packed "
                f"size (limit {limits.max_ratio:.0f}x): refusing a likely zip bomb", field="archive")
        out.append(Member(name, info.file_size))
    return out


def _tar_members(data: bytes) -> list[Member]:
    try:
        tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        infos = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise _bad(f"not a readable tar ({err})") from None
    out = []
    for info in infos:
        if info.isdir():
            _safe_name(info.name)
            continue
        if not info.isfile():
            what = "a link" if info.issym() or info.islnk() else "not a regular file"
            raise _bad(f"member {info.name!r} is {what}; archives may only hold files and folders")
        name = _safe_name(info.name)
        if name is not None:
            out.append(Member(name, info.size))
    return out


def inspect_archive(data: bytes, limits: Limits) -> tuple[str, list[Member]]:
    """(zip | tar, members), or a 4xx naming what is wrong. Reads headers only."""
    if len(data) > limits.max_bytes:
        raise SourceTooLarge(f"archive: {len(data)} bytes; at most {limits.max_bytes} on this server", field="archive")
    if not data:
        raise _bad("empty body; send the archive's bytes")
    kind = _kind(data)
    members = _zip_members(data, limits) if kind == "zip" else _tar_members(data)
    if len(members) > limits.max_files:
        raise SourceTooLarge(f"archive: {len(members)} files; at most {limits.max_files}", field="archive")
    if len({m.name for m in members}) != len(members):
        raise _bad("a file name occurs twice")
    total = sum(m.size for m in members)
    if total > limits.max_unpacked_bytes:
        raise SourceTooLarge(f"archive: unpacks to {total} bytes; at most {limits.max_unpacked_bytes}", field="archive")
    if total > (1 << 20) and total > limits.max_ratio * len(data):
        raise SourceTooLarge(f"archive: unpacks to {total / len(data):.0f}x its size (limit {limits.max_ratio:.0f}x): "
                             "refusing a likely archive bomb", field="archive")
    if not members:
        raise _bad("holds no files")
    return kind, members


def detect_layout(names: list[str]) -> str:
    """Which source layout the member names look like (the engine's loaders read these)."""
    parts = [n.split("/") for n in names]
    if any(p[-1] == "segmenter.json" for p in parts):
        if any(p[-1] == "segmenter.torchscript.pt" for p in parts):  # `dsgen segmenter import`'s folder
            raise _bad("a TorchScript segmenter is code and is not accepted as an upload; train one on your real "
                       "data with `dsgen segmenter train` and upload that folder")
        return "segmenter"
    if any(p[-1] == CONCEPT_FILE for p in parts) and any(n.endswith(".safetensors") for n in names):
        return "concept"  # `dsgen concepts learn`'s folder (before the COCO rule: its concept.json is a .json)
    if _is_controlnet(names):  # before the COCO rule: its config.json is a .json too
        return "controlnet"
    if any(len(p) >= 3 and p[-3] == "samples" and p[-1] == "record.json" for p in parts):
        return "dsgen"
    if any("SegmentationClass" in p[:-1] for p in parts):
        return "voc"
    if any(n.lower().endswith(".json") for n in names):
        return "coco"
    if any(n.lower().endswith(".png") for n in names):
        return "masks"
    if any(n.lower().endswith((".jpg", ".jpeg", ".webp", ".bmp")) for n in names):
        return "images"
    raise _bad("no masks, images or COCO/VOC/dsgen files found (expected *.png, *.json, SegmentationClass/ or samples/)")


WEIGHTS_STEM = "diffusion_pytorch_model"  # diffusers' weight file name (maybe sharded: ...-00001-of-00002)


def _is_controlnet(names: list[str]) -> bool:
    """A diffusers model folder: config.json beside diffusion_pytorch_model*.safetensors (or *.bin,
    which is refused: a tenant's pickle is never loaded)."""
    folders: dict[str, set[str]] = {}
    for n in names:
        folder, _, base = n.rpartition("/")
        folders.setdefault(folder, set()).add(base)
    for files in folders.values():
        if "config.json" not in files:
            continue
        weights = [f for f in files if f.startswith(WEIGHTS_STEM)]
        if any(f.endswith(".safetensors") for f in weights):
            return True
        if any(f.endswith(".bin") for f in weights):
            raise _bad(f"a ControlNet folder with only pickled weights ({WEIGHTS_STEM}.bin); uploads must hold "
                       f"{WEIGHTS_STEM}.safetensors (save it with save_pretrained(..., safe_serialization=True))")
    return False


def extract_archive(data: bytes, dest: Path, limits: Limits) -> Path:
    """Check, then write each member under `dest` (which must not exist yet); returns `dest`."""
    kind, members = inspect_archive(data, limits)
    dest.mkdir(parents=True)
    root = dest.resolve()
    wanted = {m.name: m for m in members}

    def target(name: str) -> Path:
        p = (root / name).resolve()
        if root not in p.parents:
            raise _bad(f"member {name!r} points outside the archive")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = _safe_name(info.filename)
                if name in wanted and not info.is_dir():
                    with zf.open(info) as src, open(target(name), "wb") as out:
                        _copy_limited(src, out, wanted[name].size, name)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                name = _safe_name(info.name)
                if name in wanted:
                    src = tf.extractfile(info)
                    with open(target(name), "wb") as out:
                        _copy_limited(src, out, wanted[name].size, name)
    return dest


def _copy_limited(src, out, size: int, name: str) -> None:
    """Copy at most the declared size (a member that lies about it is refused)."""
    left = size
    while True:
        chunk = src.read(min(1 << 20, left + 1))
        if not chunk:
            break
        left -= len(chunk)
        if left < 0:
            raise _bad(f"member {name!r} is larger than its header says")
        out.write(chunk)


# ------------------------------------------------------------------------------ use cases
def upload_source(store, settings, tenant_id: uuid.UUID, data: bytes) -> SourceView:
    """Validate the archive, then store it and its metadata (archive first, meta last)."""
    limits = Limits.from_settings(settings)
    kind, members = inspect_archive(data, limits)
    layout = detect_layout([m.name for m in members])
    concept = _concept_of(data, kind, members) if layout == "concept" else None
    upload_id = uuid.uuid4().hex
    view = SourceView(id=upload_id, format=layout, archive=kind, bytes=len(data),
                      unpacked_bytes=sum(m.size for m in members), files=len(members),
                      created_at=dt.datetime.now(dt.timezone.utc).isoformat(), concept=concept)
    store.put(archive_key(upload_id), data)
    store.put(meta_key(upload_id), json.dumps({**view.model_dump(), "tenant": str(tenant_id)}).encode())
    return view


MAX_CONCEPT_META_BYTES = 1 << 20  # concept.json is read into memory at upload: a few KB when real


def _concept_of(data: bytes, kind: str, members: list[Member]) -> dict:
    """The summary of a concept archive's CONCEPT_FILE."""
    (meta, *more) = [m for m in members if m.name.rsplit("/", 1)[-1] == CONCEPT_FILE]
    if more:
        raise _bad(f"holds {CONCEPT_FILE} twice; upload one concept folder per archive")
    if meta.size > MAX_CONCEPT_META_BYTES:
        raise _bad(f"{meta.name} is {meta.size} bytes; a concept's {CONCEPT_FILE} is at most {MAX_CONCEPT_META_BYTES}")
    name = meta.name
    if kind == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            raw = next(zf.read(i) for i in zf.infolist() if _safe_name(i.filename) == name)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            raw = next(tf.extractfile(i).read() for i in tf if i.isfile() and _safe_name(i.name) == name)
    summary = concept_summary(raw)
    if summary is None:
        raise _bad(f"{name} is not a dsgen concept (tokens, base_model); upload the folder `dsgen concepts learn` wrote")
    return summary


def get_source(store, tenant_id: uuid.UUID, upload_id: str, field: str = "upload") -> SourceView:
    """The upload's metadata; 404 when it does not exist or belongs to another tenant."""
    from shared.storage.objects import ObjectNotFound

    try:
        meta = json.loads(store.get(meta_key(upload_id)))
    except (ObjectNotFound, KeyError):
        meta = None
    if meta is None or meta.get("tenant") != str(tenant_id):
        raise NotFound(f"{field}: no upload {upload_id!r} for this tenant (POST /v1/sources returns the id)", field=field)
    return SourceView(**{k: v for k, v in meta.items() if k != "tenant"})


def spec_sources(spec) -> list[tuple[str, Any]]:
    """(field, SourceSpec) of every source a spec names."""
    out = []
    if getattr(spec, "mask2image", None) is not None:
        out.append(("mask2image.source", spec.mask2image.source))
    if getattr(spec, "edit", None) is not None:
        out.append(("edit.source", spec.edit.source))
    if getattr(spec, "augment", None) is not None:
        out.append(("augment.source", spec.augment.source))
    if getattr(spec, "layout", None) is not None and spec.layout.shapes is not None:
        out.append(("layout.shapes", spec.layout.shapes))
    return out


def check_spec_sources(spec, store, tenant_id: uuid.UUID) -> list[tuple[str, str]]:
    """API-side: sources must be this tenant's uploads, never a path on the server.

    Returns (field, message) errors; an empty list when every source is usable.
    """
    errors: list[tuple[str, str]] = []
    i2i = getattr(spec, "image2image", None)
    if i2i is not None and i2i.dataset is None:  # a dataset: checked in shared.datasets.versions.resolve_sources
        if i2i.upload is None:
            errors.append(("image2image.images", "a folder on the server cannot be used over the API; upload the images "
                                                 "with POST /v1/sources and name them as image2image.upload"))
        elif store is not None:
            try:
                get_source(store, tenant_id, i2i.upload, field="image2image.upload")
            except NotFound as err:
                errors.append(("image2image.upload", err.message.split(": ", 1)[1]))
    for field, source in spec_sources(spec):
        if source.path is not None:
            errors.append((f"{field}.path", "a folder on the server cannot be used over the API; upload an archive "
                                            "with POST /v1/sources and name it as source: {upload: <id>}, or name "
                                            "one of your datasets as source: {dataset: NAME, version: latest}"))
        elif source.dataset is not None:
            continue  # checked against the tenant's datasets in the database (shared.datasets.versions.resolve_sources)
        elif store is not None:
            try:
                get_source(store, tenant_id, source.upload, field=f"{field}.upload")
            except NotFound as err:
                errors.append((f"{field}.upload", err.message.split(": ", 1)[1]))
    m2i = getattr(spec, "mask2image", None)
    if m2i is not None and m2i.controlnet:
        errors += _check_controlnet(m2i.controlnet, store, tenant_id)
    refs = [("labels.filter.segmenter", spec.labels.filter.segmenter)]
    refs += [(f"concepts[{i}]", c) for i, c in enumerate(getattr(spec, "concepts", []))]
    if m2i is not None and m2i.resample is not None:
        refs.append(("mask2image.resample.segmenter", m2i.resample.segmenter))
    for field, ref in refs:
        if not ref:
            continue
        if not ref.startswith(UPLOAD_REF):
            errors.append((field, "a folder on the server cannot be used over the API; zip the "
                                  f"{'concept' if field.startswith('concepts') else 'segmenter'} folder, "
                                  "POST it to /v1/sources and name it as 'upload:<id>'"))
        elif store is not None:
            try:
                view = get_source(store, tenant_id, ref[len(UPLOAD_REF):], field=field)
            except (NotFound, InvalidRequest) as err:
                errors.append((field, err.message.split(": ", 1)[1]))
                continue
            if field.startswith("concepts"):
                if view.format != "concept":
                    errors.append((field, f"upload {view.id} holds a {view.format} layout, not a concept folder; zip "
                                          "the folder `dsgen concepts learn` wrote (concept.json + one .safetensors "
                                          "per token) and POST it to /v1/sources"))
                elif view.concept is not None and (why := foreign_concept(view.concept, spec.model.id)) is not None:
                    errors.append((field, why))
            if field.endswith("segmenter") and view.format != "segmenter":
                errors.append((field, f"upload {view.id} holds a {view.format} layout, not a segmenter folder; zip the "
                                      "folder `dsgen segmenter train` wrote (segmenter.json + segmenter.pt) and POST it "
                                      "to /v1/sources"))
    return errors


def _check_controlnet(ref: str, store, tenant_id: uuid.UUID) -> list[tuple[str, str]]:
    """mask2image.controlnet over the API: 'upload:<id>' of this tenant's zipped ControlNet folder."""
    field = "mask2image.controlnet"
    if not ref.startswith(UPLOAD_REF):
        return [(field, "a ControlNet folder on the server cannot be named over the API; zip the ControlNet folder "
                        "(config.json + diffusion_pytorch_model.safetensors), POST it to /v1/sources and name it "
                        "as 'upload:<id>'")]
    if store is None:
        return []
    try:
        view = get_source(store, tenant_id, ref[len(UPLOAD_REF):], field=field)
    except (NotFound, InvalidRequest) as err:
        return [(field, err.message.split(": ", 1)[1])]
    if view.format != "controlnet":
        return [(field, f"upload {view.id} is a {view.format} archive, not a ControlNet; upload a zipped ControlNet "
                        "folder (config.json + diffusion_pytorch_model.safetensors)")]
    return []
