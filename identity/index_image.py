"""The drivers index image: the in-memory drivers index (candidates.IndexFrame) saved on local disk
under the version of the index it was built from, so that a run over thousands of leads reads it in
a fraction of a second instead of reading every record from PostgreSQL and building its structures
again (about 5 s at a million drivers).

The version is canon.drivers_index_counts.version: a new random value each time the index refresh
writes the counts, which it does after every change to the index, in the transaction of the change
(identity.index). An image is read only when its version is the database's current one and its
format is this code's (IMAGE_FORMAT, and the Polars version that wrote it: the image carries lookups by
Polars' hash, stable within one Polars version only): a refresh that rolled back leaves a version nobody sees, and
an image of an older index is never read. Anything wrong with an image (missing, partly deleted,
another format) means the index is read from the database, as without an image.

Written into a temporary folder and renamed into place, so a reader never sees half an image; each
new image removes the older ones of its database (each database has a folder of its own under
CT4_INDEX_IMAGE_DIR: several on one machine never remove each other's). The image holds what the
drivers index holds (names, phones, documents): its folder is readable by its owner only.
CT4_INDEX_IMAGE_DIR sets the folder; empty turns images off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc
from django.conf import settings
from django.db import connection

log = logging.getLogger("ct4.matching")

# Bump when IndexFrame's parts change shape (columns, dtypes, meaning): older images are then ignored.
# 2: the records' initials and the key columns' lookups (hashes by Polars: see _format).
IMAGE_FORMAT = 2
_META = "meta.json"
# A staged folder this old was left by a process that died or rolled back (a build stages in seconds).
STAGED_STALE_SECONDS = 3600


@dataclass
class IndexParts:
    """What an IndexFrame is made of, as frames and arrays (candidates.IndexFrame.parts / restored)."""

    frames: dict[str, pl.DataFrame]
    arrays: dict[str, np.ndarray]
    meta: dict


def image_dir() -> Path | None:
    """This database's image folder: CT4_INDEX_IMAGE_DIR / one folder per database (name, host, port), so
    that databases sharing a machine (the demo, benches, another environment) never remove each
    other's images. None when images are off."""
    folder = getattr(settings, "CT4_INDEX_IMAGE_DIR", "")
    return Path(folder) / database_folder() if folder else None


def database_folder() -> str:
    """A folder name for the current database: its name, readable, and a digest of name, host and port
    (two servers may both hold a "ct4")."""
    db = connection.settings_dict
    name = str(db.get("NAME") or "default")
    where = "\x00".join(str(db.get(key) or "") for key in ("NAME", "HOST", "PORT"))
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]
    return f"{safe}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def index_version() -> str | None:
    """The current index version (None before the first refresh)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT version::text FROM canon.drivers_index_counts")
        row = cursor.fetchone()
    return row[0] if row else None


def _image_meta(version: str | None) -> tuple[Path, dict] | None:
    """The folder and record of `version`'s image when it is one this code can use, else None. Raises
    what reading a damaged record raises (but a missing one: None)."""
    folder = image_dir()
    if folder is None or version is None:
        return None
    path = folder / version
    try:
        meta = json.loads((path / _META).read_text())
    except FileNotFoundError:
        return None
    return (path, meta) if meta.get("format") == _format() and meta.get("version") == version else None


def _format() -> str:
    """This code's image format: IMAGE_FORMAT and the Polars version, whose hash the lookups were sorted
    by (Polars keeps Series.hash stable within a version, not across versions)."""
    return f"{IMAGE_FORMAT}/polars-{pl.__version__}"


def image_exists(version: str | None) -> bool:
    """Whether an image of `version` in this code's format is on disk (its record alone is read)."""
    try:
        return _image_meta(version) is not None
    except (OSError, ValueError):
        return False


def image_read(version: str | None) -> IndexParts | None:
    """The image of `version`, or None when there is none that this code can use."""
    path = None
    try:
        found = _image_meta(version)
        if found is None:
            return None
        path, meta = found
        frames = {name: _frame_mapped(path / f"{name}.arrow") for name in meta["frames"]}
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any damaged image: read the database instead
        log.warning("drivers index image %s unreadable (%s): reading the index from the database",
                    path or version, exc)
        return None
    return IndexParts(frames=frames, arrays=arrays, meta=meta["values"])


def _frame_mapped(file: Path) -> pl.DataFrame:
    """An image's frame, its file memory-mapped instead of read: the index's million records in ~0.03 s
    where pl.read_ipc copied them in 0.5-0.75 s (Polars 2.1 dropped its memory_map). Pages are read from
    the file as the matcher touches them (a batch of a thousand leads touches few). A mapped file stays
    readable after a newer image removes it (unlinked, not overwritten: image_publish), and the
    arrays are mapped read-only the same way (np.load mmap_mode="r"): nothing writes into a read image."""
    return pl.from_arrow(pa.ipc.open_file(pa.memory_map(str(file))).read_all(), rechunk=False)


def image_stage(parts: IndexParts) -> Path | None:
    """Write `parts` into a new temporary folder beside the images (image_publish names it)."""
    folder = image_dir()
    if folder is None:
        return None
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.mkdir(exist_ok=True, mode=0o700)
    staged = Path(tempfile.mkdtemp(prefix=".staged-", dir=folder))
    try:
        for name, frame in parts.frames.items():
            frame.write_ipc(staged / f"{name}.arrow", compression="uncompressed")
        for name, array in parts.arrays.items():
            np.save(staged / f"{name}.npy", array)
        meta = {"format": _format(), "frames": list(parts.frames), "arrays": list(parts.arrays),
                "values": parts.meta}
        (staged / _META).write_text(json.dumps(meta))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def image_publish(staged: Path | None, version: str) -> Path | None:
    """Name a staged image after `version` (atomically) and remove the other images. An image of that
    version already there (another process's) is kept, unless this code cannot read it. Never raises:
    without an image the next run reads the database."""
    if staged is None:
        return None
    try:
        meta_path = staged / _META
        meta = json.loads(meta_path.read_text())
        meta["version"] = version
        meta_path.write_text(json.dumps(meta))
        final = staged.parent / version
        try:
            os.rename(staged, final)
        except OSError:  # the same version published meanwhile, or before an upgrade in another format
            if not image_exists(version):
                # One this code cannot read would stay until the index changes: every run would read
                # the database again. Replaced (a reader of the old code then reads the database).
                shutil.rmtree(final, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rename(staged, final)
            shutil.rmtree(staged, ignore_errors=True)
        for other in staged.parent.iterdir():
            # Another process's folder being staged now is left alone; one left by a crash, after a while.
            if other.name != version and (not other.name.startswith(".staged-") or _stale(other)):
                shutil.rmtree(other, ignore_errors=True)
        # Images of the layout before one folder per database (straight under CT4_INDEX_IMAGE_DIR): no
        # run reads them any more, and they hold personal data.
        for old in staged.parent.parent.iterdir():
            if (old / _META).is_file():
                shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.warning("drivers index image not published (%s)", exc)
        shutil.rmtree(staged, ignore_errors=True)
        return None
    return final


def image_write(version: str, parts: IndexParts) -> Path | None:
    """Stage and publish in one step (a run that read the index from the database leaves its image)."""
    try:
        staged = image_stage(parts)
    except OSError as exc:  # a full or read-only disk costs the next run its shortcut, nothing else
        log.warning("drivers index image not written (%s)", exc)
        return None
    return image_publish(staged, version)


def _stale(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > STAGED_STALE_SECONDS
    except OSError:
        return False
