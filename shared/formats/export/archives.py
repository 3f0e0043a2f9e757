"""The export archives: deterministic zips, and the sink that streams merged samples into them.

Finalisation used to move every per-sample file of every fragment into a merged folder and
zip that folder: three file-system operations per file, and on a virtual disk creating a
file costs about 0.8 ms (0.01 ms on tmpfs), which made up most of the finalize time. The
`ArchiveSink` writes a merged sample's files straight from the fragment into its format's
archive, in memory, and remembers each file's size and sha256 for the manifest's file table;
only the files shared by many samples (COCO json, parquet, lists) exist on disk.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same files, same archive bytes
# Already compressed: deflating them again costs CPU and gains nothing.
STORED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".parquet", ".zip", ".gz"})
SPOOL_SORT_CHUNK = 200_000  # lines sorted in memory at a time when a listing must be sorted


def compressed(name: str) -> bool:
    """Whether an archive entry is deflated (not for formats that are compressed already)."""
    return os.path.splitext(name)[1].lower() not in STORED_SUFFIXES  # no pathlib: it interns every part


class ZipWriter:
    """An append-only zip archive whose central directory is spooled to a scratch file, so
    memory stays flat however many entries it gets (`zipfile` keeps a `ZipInfo` per entry,
    about 360 bytes: 0.5 GB for the 1.5M files of a 100k-sample export). Entries get fixed
    timestamps and modes (same files, same bytes); ZIP64 records are written past 65,535
    entries or 4 GiB of offsets, as `zipfile` and `unzip` read them."""

    _DOS_DATE = ((ZIP_TIME[0] - 1980) << 9) | (ZIP_TIME[1] << 5) | ZIP_TIME[2]
    _DOS_TIME = (ZIP_TIME[3] << 11) | (ZIP_TIME[4] << 5) | (ZIP_TIME[5] // 2)
    _MADE_BY = (3 << 8) | 45  # unix, spec 4.5 (ZIP64)

    def __init__(self, path: Path):
        self.path = Path(path)
        self._out = open(self.path, "wb")
        self._directory = tempfile.TemporaryFile()
        self.entries = 0

    def add(self, name: str, data: bytes) -> None:
        if len(data) >= 0xFFFFFFFF:
            raise ValueError(f"{name}: an archive entry of 4 GiB or more is not supported")
        encoded = name.encode("utf-8")
        flags = 0 if encoded.isascii() else 0x800  # bit 11: the name is UTF-8
        crc = zlib.crc32(data)
        if compressed(name):
            deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            body, method = deflate.compress(data) + deflate.flush(), 8
        else:
            body, method = data, 0
        offset = self._out.tell()
        self._out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, self._DOS_TIME, self._DOS_DATE,
                                    crc, len(body), len(data), len(encoded), 0) + encoded)
        self._out.write(body)
        extra, stored_offset = b"", offset
        if offset >= 0xFFFFFFFF:
            extra, stored_offset = struct.pack("<HHQ", 1, 8, offset), 0xFFFFFFFF
        self._directory.write(struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, self._MADE_BY, 45 if extra else 20, flags, method, self._DOS_TIME,
            self._DOS_DATE, crc, len(body), len(data), len(encoded), len(extra), 0, 0, 0, 0o644 << 16, stored_offset)
            + encoded + extra)
        self.entries += 1

    def close(self) -> None:
        if self._out.closed:
            return
        start = self._out.tell()
        self._directory.seek(0)
        while chunk := self._directory.read(1 << 20):
            self._out.write(chunk)
        size = self._out.tell() - start
        if self.entries >= 0xFFFF or start >= 0xFFFFFFFF or size >= 0xFFFFFFFF:
            end64 = self._out.tell()
            self._out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, self._MADE_BY, 45, 0, 0, self.entries,
                                        self.entries, size, start))
            self._out.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
            self._out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
        else:
            self._out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, self.entries, self.entries, size, start, 0))
        self._out.close()
        self._directory.close()

    def __enter__(self) -> "ZipWriter":
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.close()


def zip_folder(folder: Path, dest: Path) -> None:
    """A deterministic archive of `folder`: sorted entries, fixed timestamps."""
    with ZipWriter(dest) as zf:
        add_folder(zf, folder)


def add_folder(zf: ZipWriter, folder: Path) -> None:
    from shared.formats.export.fragments import walk_files

    for path in walk_files(folder):  # sorted paths, streamed (no list of every file)
        zf.add(path.relative_to(folder).as_posix(), path.read_bytes())


class _Listing:
    """The files one sink directory received, as JSON lines [name, bytes, sha256] on disk,
    read back in name order (they arrive in sample order, which is name order while stems
    have one width; past a million samples they are sorted on disk, a chunk at a time)."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "w", encoding="utf-8")
        self.last: str | None = None
        self.in_order = True

    def add(self, name: str, size: int, sha256: str) -> None:
        if self.last is not None and name <= self.last:
            self.in_order = False
        self.last = name
        self.f.write(json.dumps([name, size, sha256]) + "\n")

    def close(self) -> None:
        self.f.close()

    def __iter__(self) -> Iterator[tuple[str, int, str]]:
        if self.in_order:
            yield from _read_lines(self.path)
            return
        chunks: list[Path] = []
        lines: list[tuple[str, int, str]] = []
        for row in _read_lines(self.path):
            lines.append(row)
            if len(lines) >= SPOOL_SORT_CHUNK:
                chunks.append(self._chunk(lines, len(chunks)))
                lines = []
        if lines:
            chunks.append(self._chunk(lines, len(chunks)))
        try:
            yield from heapq.merge(*(_read_lines(c) for c in chunks), key=lambda row: row[0])
        finally:
            for c in chunks:
                c.unlink(missing_ok=True)

    def _chunk(self, lines: list, k: int) -> Path:
        path = self.path.with_name(f"{self.path.name}.{k}")
        with open(path, "w", encoding="utf-8") as f:
            for row in sorted(lines, key=lambda row: row[0]):
                f.write(json.dumps(row) + "\n")
        return path


def _read_lines(path: Path) -> Iterator[tuple[str, int, str]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, size, sha = json.loads(line)
            yield name, size, sha


class ArchiveSink:
    """Where a merge puts each sample's own files: straight into `<folder>/<format>.zip`.

    `listing(fmt, rel_dir)` gives back, in name order, what a directory received (name, size,
    sha256) and `subdirs` the directories that received files, so the manifest's file table
    walks the sink's files and the on-disk shared files together, in the order a walk of the
    single-pass folder gives. `close(root)` adds each format's on-disk files and finishes the
    archives; `archives` maps format to archive path."""

    def __init__(self, folder: Path, formats: list[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._spool = Path(tempfile.mkdtemp(prefix="listings-", dir=self.folder))
        self.archives = {fmt: self.folder / f"{fmt}.zip" for fmt in formats}
        self._zips = {fmt: ZipWriter(path) for fmt, path in self.archives.items()}
        self._listings: dict[tuple[str, str], _Listing] = {}
        self._dirs: dict[tuple[str, str], set[str]] = {}  # (fmt, dir) -> child directories with sink files

    def add(self, fmt: str, rel: str, source: Path | bytes) -> None:
        data = source.read_bytes() if isinstance(source, Path) else source
        self._zips[fmt].add(rel, data)
        parent, _, name = rel.rpartition("/")
        key = (fmt, parent)
        listing = self._listings.get(key)
        if listing is None:
            listing = self._listings[key] = _Listing(self._spool / f"{len(self._listings):05d}.jsonl")
            self._register(fmt, parent)
        listing.add(name, len(data), hashlib.sha256(data).hexdigest())

    def _register(self, fmt: str, rel_dir: str) -> None:
        while rel_dir:
            parent, _, name = rel_dir.rpartition("/")
            self._dirs.setdefault((fmt, parent), set()).add(name)
            rel_dir = parent

    def subdirs(self, fmt: str, rel_dir: str) -> set[str]:
        return self._dirs.get((fmt, rel_dir), set())

    def listing(self, fmt: str, rel_dir: str) -> Iterator[tuple[str, int, str]]:
        listing = self._listings.get((fmt, rel_dir))
        if listing is None:
            return iter(())
        listing.close()
        return iter(listing)

    def close(self, root: Path) -> dict[str, Path]:
        for fmt, zf in self._zips.items():
            if (root / fmt).is_dir():
                add_folder(zf, root / fmt)
            zf.close()
        self._discard_listings()
        return self.archives

    def abort(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._discard_listings()

    def _discard_listings(self) -> None:
        for listing in self._listings.values():
            listing.close()
        for path in self._spool.iterdir():
            os.unlink(path)
        self._spool.rmdir()
