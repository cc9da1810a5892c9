"""Where each converted test input came from: ``conversions.json`` in the folder of converted copies.

Per case: the source paths, their [size, mtime_ns], their SHA-256, the settings the conversion
used and the files it wrote. A conversion is reused only while all of these still hold; size and
mtime are the cheap test, and when they differ the content decides (a file replaced by one with
an older mtime is reconverted, a file only touched is not). The record is written atomically.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Dict, List, Mapping, Optional

from nnunet_mtl.io_utils import atomic_write_json, read_json

log = logging.getLogger(__name__)

NNUNET_NAME = re.compile(r"^(.+)_(\d{4})\.nii\.gz$")
MANIFEST = "conversions.json"
MANIFEST_VERSION = 1


def source_stat(path: str) -> List[int]:
    """[size, mtime_ns]; for a DICOM-series folder summed / latest over its files."""
    if os.path.isdir(path):
        sizes, times = [0], [0]
        for dirpath, _, names in os.walk(path):
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                sizes.append(st.st_size)
                times.append(st.st_mtime_ns)
        return [sum(sizes), max(times)]
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def content_hash(path: str) -> str:
    """SHA-256 of a file, or of a folder's relative names and contents."""
    h = hashlib.sha256()
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
    for f in files:
        if f != path:
            h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_manifest(folder: str) -> Dict[str, dict]:
    """{case id: record} from ``folder/conversions.json``; empty (so everything reconverts) if unreadable."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError):
        log.warning("%s: unreadable, reconverting every input", path)
        return {}
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return {}
    return dict(data.get("cases", {}))


def up_to_date(record: Optional[dict], sources: List[str], settings: dict, folder: str) -> bool:
    """Same sources, same settings, files present, and each source unchanged (size and mtime equal, or,
    when they differ, the same content: a copy that only touched the file is not reconverted)."""
    if not record or record.get("sources") != sources or record.get("settings") != settings:
        return False
    if not all(os.path.isfile(os.path.join(folder, f)) for f in record.get("files", [])):
        return False
    for i, src in enumerate(sources):
        now = source_stat(src)
        if record["stat"][i] == now:
            continue
        if content_hash(src) != record["sha256"][i]:
            return False
        record["stat"][i] = now
    return True


def prune(folder: str, records: Dict[str, dict], current: Mapping[str, List[str]]) -> List[str]:
    """Remove conversions (recorded or left by an older run) of cases that are no longer inputs, and
    channel files a current case no longer has; returns the removed case ids."""
    keep = {os.path.basename(p) for files in current.values() for p in files}
    dropped = {cid for cid in records if cid not in current}
    for cid in dropped:
        del records[cid]
    for name in os.listdir(folder):
        m = NNUNET_NAME.match(name)
        if m and name not in keep:
            os.remove(os.path.join(folder, name))
            if m.group(1) not in current and not name.startswith("."):
                dropped.add(m.group(1))
    return sorted(dropped)


def new_record(sources: List[str], settings: dict, files: List[str]) -> dict:
    """The record of a conversion just written from ``sources`` (absolute paths)."""
    return {"sources": sources, "stat": [source_stat(p) for p in sources],
            "sha256": [content_hash(p) for p in sources], "settings": settings, "files": files}


def write_manifest(folder: str, records: Dict[str, dict]) -> None:
    atomic_write_json(os.path.join(folder, MANIFEST), {"version": MANIFEST_VERSION, "cases": records})
