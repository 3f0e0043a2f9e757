"""Archives streamed by the merge (`ArchiveSink`) hold exactly the single-pass files."""
from __future__ import annotations

import shutil
import zipfile

import pytest

from shared.formats import layout
from shared.formats.export import write_exports
from shared.formats.export.archives import ArchiveSink
from shared.formats.export.fragments import FragmentError, merge_fragments, pack_fragment, unpack_fragment
from shared.formats.spec import EXPORT_FORMATS
from tests.shared.formats.export.test_export_fragments import N, _dropped, _spec, _tree, _write_samples


@pytest.fixture(scope="module")
def samples():
    from worker.engine.standin import StandinEngine

    return list(StandinEngine(_spec()).generate(range(N)))


def _stored_fragments(tmp_path, samples, spec, shard):
    """Fragments as finalisation gets them: packed by the shard, unpacked from the bytes."""
    fragments = []
    for start in range(0, len(samples), shard):
        work = tmp_path / f"work{start}"
        write_exports(work, spec, _write_samples(work, samples[start:start + shard]))
        fragments.append(unpack_fragment(pack_fragment(work), tmp_path / "parts" / f"{start:05d}"))
        shutil.rmtree(work)
    return fragments


def test_archives_from_stored_fragments_hold_the_single_pass_files_and_manifest(tmp_path, samples):
    kept = [_dropped(gs) if gs.record.index in (3, 4, 30) else gs for gs in samples]
    spec = _spec()
    single = tmp_path / "single"
    write_exports(single, spec, _write_samples(single, kept))
    expected = _tree(single)
    fragments = _stored_fragments(tmp_path, kept, spec, shard=6)
    # the per-sample files stay in the fragment archives: only shared files are unpacked
    unpacked = [p for f in fragments for p in f.root.rglob("*.png")]
    assert not unpacked
    sink = ArchiveSink(tmp_path / "archives", list(spec.export.formats))
    manifest = merge_fragments(tmp_path / "merged", spec, fragments, sink)
    archives = sink.close(tmp_path / "merged")
    assert manifest.read_bytes() == expected["manifest.json"]
    assert sorted(archives) == sorted(EXPORT_FORMATS)
    for fmt, path in archives.items():
        with zipfile.ZipFile(path) as zf:
            got = {f"{fmt}/{name}": zf.read(name) for name in zf.namelist()}
        assert got == {k: v for k, v in expected.items() if k.startswith(f"{fmt}/")}, fmt
    assert not list((tmp_path / "archives").glob("listings-*"))  # scratch listings removed


def test_a_listing_received_out_of_name_order_is_read_back_sorted(tmp_path, monkeypatch):
    """Past a million samples the stems grow a digit and arrive out of name order; the file
    table must still follow the folder walk's order (sorted on disk, a chunk at a time)."""
    from shared.formats.export import archives

    monkeypatch.setattr(archives, "SPOOL_SORT_CHUNK", 3)
    sink = ArchiveSink(tmp_path / "a", ["coco"])
    names = [layout.sample_stem(i) + ".jpg" for i in (999_998, 999_999, 1_000_000, 1_000_001, 5, 1_000_002, 7)]
    for name in names:
        sink.add("coco", f"images/train/{name}", name.encode())
    got = [name for name, _, _ in sink.listing("coco", "images/train")]
    assert got == sorted(names) != names
    assert sink.subdirs("coco", "") == {"images"} and sink.subdirs("coco", "images") == {"train"}
    sink.close(tmp_path / "none")


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, on the way to the refusal
def test_a_sample_file_in_two_fragments_is_refused(tmp_path, samples):
    spec = _spec(["yolo"])
    fragments = _stored_fragments(tmp_path, samples[:4], spec, shard=4)
    fragments += _stored_fragments(tmp_path / "again", samples[:4], spec, shard=4)
    sink = ArchiveSink(tmp_path / "archives", ["yolo"])
    with pytest.raises(FragmentError, match="in two fragments"):
        merge_fragments(tmp_path / "merged", spec, fragments, sink)
    sink.abort()


def test_zip_writer_archives_read_back_with_zipfile_crc_checked(tmp_path):
    from shared.formats.export.archives import ZipWriter

    files = {"a.json": b'{"x": 1}' * 50, "images/0001.png": bytes(range(256)), "ümlaut/b.txt": b"b\n", "empty.txt": b""}
    with ZipWriter(tmp_path / "a.zip") as zw:
        for name, data in files.items():
            zw.add(name, data)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == files
        assert zf.getinfo("images/0001.png").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("a.json").compress_type == zipfile.ZIP_DEFLATED
        assert zf.getinfo("a.json").date_time == (1980, 1, 1, 0, 0, 0)
    with ZipWriter(tmp_path / "b.zip") as zw:
        for name, data in files.items():
            zw.add(name, data)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_zip_writer_past_65535_entries_writes_zip64_records(tmp_path):
    from shared.formats.export.archives import ZipWriter

    n = 70_000
    with ZipWriter(tmp_path / "big.zip") as zw:
        for i in range(n):
            zw.add(f"labels/{i:06d}.txt", str(i).encode())
    with zipfile.ZipFile(tmp_path / "big.zip") as zf:
        names = zf.namelist()
        assert len(names) == n and zf.read(names[-1]) == str(n - 1).encode()
