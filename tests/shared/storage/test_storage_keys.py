import uuid

import pytest

from shared.storage import keys

JOB = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_sample_keys_are_deterministic_and_spread_by_shard():
    a = keys.sample_key(JOB, 130, 64, "image.png")
    assert a == keys.sample_key(str(JOB), 130, 64, "image.png")
    assert a == f"jobs/{JOB}/shards/00002/000130/image.png"
    assert keys.sample_key(JOB, 5, 64, "image.png").split("/")[3] == "00000"
    assert a.startswith(keys.job_prefix(JOB))


def test_export_and_manifest_keys_live_under_the_job():
    assert keys.export_key(JOB, "coco") == f"jobs/{JOB}/exports/coco.zip"
    assert keys.manifest_key(JOB) == f"jobs/{JOB}/manifest.json"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_file_names_cannot_escape_the_sample_folder(bad):
    with pytest.raises(ValueError):
        keys.sample_key(JOB, 0, 8, bad)


def test_job_ids_must_be_uuids():
    with pytest.raises(ValueError):
        keys.job_prefix("../../etc")
    with pytest.raises(ValueError):
        keys.export_key(JOB, "../coco")
