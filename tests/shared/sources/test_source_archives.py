"""Source archives: validation (size, format, traversal, links, bombs) and safe extraction."""
from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from shared.errors import DomainError
from shared.sources.archives import Limits, detect_layout, extract_archive, inspect_archive

LIMITS = Limits(max_bytes=1 << 20, max_unpacked_bytes=8 << 20, max_files=10, max_ratio=50.0)


def zip_of(files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_of(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, gz=True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _status(data: bytes, limits=LIMITS) -> tuple[int, str]:
    with pytest.raises(DomainError) as err:
        inspect_archive(data, limits)
    return err.value.status, err.value.message


def test_a_good_zip_and_tar_are_read_and_extracted(tmp_path):
    files = {"masks/a.png": b"\x89PNG...", "masks/sub/b.png": b"x" * 100}
    kind, members = inspect_archive(zip_of(files), LIMITS)
    assert kind == "zip" and sorted(m.name for m in members) == sorted(files)
    out = extract_archive(zip_of(files), tmp_path / "z", LIMITS)
    assert (out / "masks/sub/b.png").read_bytes() == b"x" * 100
    t = tar_of([tarfile.TarInfo("masks/a.png")], {"masks/a.png": b"abc"})
    assert inspect_archive(t, LIMITS)[0] == "tar"
    assert (extract_archive(t, tmp_path / "t", LIMITS) / "masks/a.png").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/passwd", "C:/x.png", "a\\..\\..\\x.png"])
def test_path_traversal_is_refused(name, tmp_path):
    status, message = _status(zip_of({name: b"x"}))
    assert status == 422 and ("outside the archive" in message or "absolute path" in message)
    assert not (tmp_path / "evil.png").exists()


def test_links_and_devices_in_tars_are_refused():
    link = tarfile.TarInfo("masks/a.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    assert _status(tar_of([link])) == (422, "archive: member 'masks/a.png' is a link; archives may only hold files and folders")
    hard = tarfile.TarInfo("b.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "a.png"
    assert "is a link" in _status(tar_of([hard]))[1]
    dev = tarfile.TarInfo("dev")
    dev.type = tarfile.CHRTYPE
    assert "not a regular file" in _status(tar_of([dev]))[1]


def test_symlinks_in_zips_are_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("a.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    assert "symbolic link" in _status(buf.getvalue())[1]


def test_zip_bombs_and_size_limits_are_413():
    bomb = zip_of({"zeros.png": b"\0" * (6 << 20)})  # 6 MiB of zeros packs to a few KiB
    status, message = _status(bomb)
    assert status == 413 and "zip bomb" in message
    status, message = _status(zip_of({"a.png": b"\0" * (9 << 20)}), Limits(max_bytes=1 << 20, max_unpacked_bytes=8 << 20,
                                                                         max_files=10, max_ratio=1e9))
    assert status == 413 and "unpacks to" in message
    assert _status(b"PK\x03\x04" + b"\0" * (2 << 20))[0] == 413  # over max_bytes before parsing
    assert _status(zip_of({f"{i}.png": b"x" for i in range(11)}))[0] == 413


def test_tar_gz_bomb_is_refused():
    data = tar_of([tarfile.TarInfo("zeros.png")], {"zeros.png": b"\0" * (6 << 20)})
    status, message = _status(data)
    assert status == 413 and "bomb" in message


def test_not_an_archive_and_garbage_are_422():
    assert _status(b"hello world, not an archive")[1].startswith("archive: not a zip, tar or tar.gz")
    assert _status(b"PK\x03\x04garbage-garbage")[0] == 422
    assert _status(b"")[0] == 422


def test_layout_detection():
    assert detect_layout(["d/samples/000000/record.json", "d/samples/000000/semantic.png"]) == "dsgen"
    assert detect_layout(["VOC/SegmentationClass/a.png"]) == "voc"
    assert detect_layout(["x/instances.json", "x/a.jpg"]) == "coco"
    assert detect_layout(["a.png"]) == "masks"
    assert detect_layout(["seg/segmenter.json", "seg/segmenter.pt"]) == "segmenter"
    with pytest.raises(DomainError, match="no masks, images"):
        detect_layout(["readme.txt"])


def test_a_controlnet_folder_is_recognised_before_the_coco_rule():
    assert detect_layout(["cn/config.json", "cn/diffusion_pytorch_model.safetensors"]) == "controlnet"
    assert detect_layout(["config.json", "diffusion_pytorch_model.safetensors"]) == "controlnet"
    sharded = ["cn/config.json", "cn/diffusion_pytorch_model.safetensors.index.json",
               "cn/diffusion_pytorch_model-00001-of-00002.safetensors", "cn/diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert detect_layout(sharded) == "controlnet"
    # a config.json with weights elsewhere, or no weights at all, is not a ControlNet
    assert detect_layout(["x/config.json", "y/diffusion_pytorch_model.safetensors", "x/a.jpg"]) == "coco"
    assert detect_layout(["x/config.json", "x/a.png"]) == "coco"
    # safetensors beside a .bin: accepted (only the safetensors file is ever loaded)
    assert detect_layout(["cn/config.json", "cn/diffusion_pytorch_model.bin",
                          "cn/diffusion_pytorch_model.safetensors"]) == "controlnet"


def test_a_controlnet_with_only_pickled_weights_is_refused():
    with pytest.raises(DomainError, match="only pickled weights") as err:
        detect_layout(["cn/config.json", "cn/diffusion_pytorch_model.bin"])
    assert err.value.status == 422 and err.value.field == "archive"


def test_a_source_spec_names_a_dataset_version():
    from shared.formats.spec import SourceSpec

    assert SourceSpec(dataset="cats").version is None  # latest, resolved by the server at submit
    assert SourceSpec(dataset="cats", version="latest").version == "latest"
    assert SourceSpec(dataset="cats", version="v3").version == 3
    assert SourceSpec(dataset="cats", version="3").version == 3
    assert SourceSpec(dataset="cats", version=2).version == 2
    for bad in ({"dataset": "cats", "version": 0}, {"dataset": "cats", "version": "newest"},
                {"dataset": "cats", "version": True}, {"dataset": "cats", "version": "v-1"},
                {"dataset": "../cats"}, {"dataset": "cats\n"}, {"upload": "0" * 32, "version": 1},
                {"dataset": "cats", "path": "/x"}, {"dataset": "cats", "format": "voc"}):
        with pytest.raises(ValueError):
            SourceSpec(**bad)


def test_image2image_names_a_dataset_alone():
    from shared.formats.spec import Image2ImageSpec

    assert Image2ImageSpec(dataset="cats", version="v2").version == 2
    assert Image2ImageSpec(dataset="cats").version is None
    for bad in ({"dataset": "cats", "images": "x"}, {"dataset": "cats", "upload": "0" * 32},
                {"upload": "0" * 32, "version": 1}, {"dataset": "a/b"}, {"dataset": "cats", "version": "last"}):
        with pytest.raises(ValueError):
            Image2ImageSpec(**bad)
