"""Every object-store key, built in one place.

Keys are deterministic functions of (job, shard, index, file name), so a retried shard
overwrites its own objects instead of adding new ones. The shard number comes right after
the job id, so one large job spreads its writes over many key prefixes (S3 partitions
throughput per prefix).

    jobs/{job}/shards/{shard:05d}/{index:06d}/{file}   sample files (image.png, ...)
    jobs/{job}/shards/{shard:05d}/fragment.zip         the shard's export fragment (its samples' exports)
    jobs/{job}/exports/{format}.zip                    one archive per export format
    jobs/{job}/manifest.json                           written last: the dataset's commit point
"""
from __future__ import annotations

import re
import uuid

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: "$" would accept a trailing newline
_FORMAT = re.compile(r"[a-z0-9_]+")

OVERLAY_FILE = "overlay.png"
MANIFEST_FILE = "manifest.json"
FRAGMENT_FILE = "fragment.zip"


def _job(job_id: uuid.UUID | str) -> str:
    return str(uuid.UUID(str(job_id)))  # normalised, and refuses anything that is not a uuid


def job_prefix(job_id: uuid.UUID | str) -> str:
    """Everything of one job lives under this prefix (deleting a job deletes it)."""
    return f"jobs/{_job(job_id)}/"


def shard_of(index: int, shard_size: int) -> int:
    if index < 0 or shard_size < 1:
        raise ValueError("index must be >= 0 and shard_size >= 1")
    return index // shard_size


def sample_prefix(job_id: uuid.UUID | str, index: int, shard_size: int) -> str:
    return f"{job_prefix(job_id)}shards/{shard_of(index, shard_size):05d}/{index:06d}/"


def sample_key(job_id: uuid.UUID | str, index: int, shard_size: int, file_name: str) -> str:
    if not _FILE_NAME.fullmatch(file_name):
        raise ValueError(f"bad file name {file_name!r}")
    return sample_prefix(job_id, index, shard_size) + file_name


def fragment_key(job_id: uuid.UUID | str, shard_index: int) -> str:
    if shard_index < 0:
        raise ValueError("shard_index must be >= 0")
    return f"{job_prefix(job_id)}shards/{shard_index:05d}/{FRAGMENT_FILE}"


def export_key(job_id: uuid.UUID | str, fmt: str) -> str:
    if not _FORMAT.fullmatch(fmt):
        raise ValueError(f"bad export format {fmt!r}")
    return f"{job_prefix(job_id)}exports/{fmt}.zip"


def manifest_key(job_id: uuid.UUID | str) -> str:
    return f"{job_prefix(job_id)}{MANIFEST_FILE}"
