"""Readers for the image-caption formats data engineers bring, streamed and never extracted to disk.

- imagefolder: a zip or tar (or a local folder) with images and ``metadata.jsonl`` / ``metadata.csv``
  holding ``file_name`` and ``text`` (``caption`` accepted); extra columns are kept; several rows may
  name the same image (several captions).
- WebDataset tar shards: ``key.{png,jpg,jpeg,webp}`` with ``key.txt`` or ``key.json`` (a caption field).

Each reader yields `RawRecord`s (one per caption row) and `RawReject`s (a member or a metadata row that
cannot become a record, with the reason). Members with absolute paths, ``..``, links or devices are
rejected by name and their bytes are never read. Archives are read member by member; only the
metadata is held in memory.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gen_engine.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_KEYS = ("text", "caption")


class DropError(UserError):
    """The drop as a whole is unusable (the message names the file and what to do)."""


@dataclass
class RawRecord:
    """One (image, caption) pair as found; checks come later."""

    source: str  # member name or file path, for error messages
    image: bytes | None  # None: referenced image missing
    caption_raw: bytes | str | None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class RawReject:
    source: str
    reason: str
    data: bytes = b""  # original bytes, for the quarantine (empty for unsafe members: never read)


def unsafe_member_reason(name: str, kind: str = "file") -> str | None:
    """Why a member must not be touched, or None. kind: file, dir, symlink, hardlink, device."""
    if kind in ("symlink", "hardlink"):
        return f"archive member '{name}' is a {kind}; links are not accepted"
    if kind == "device":
        return f"archive member '{name}' is a device or FIFO; not accepted"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"archive member '{name}' has an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return f"archive member '{name}' contains '..' (zip slip); not accepted"
    return None


# --- archive access -------------------------------------------------------------------------------------
@dataclass
class Member:
    name: str
    kind: str  # file, dir, symlink, hardlink, device
    size: int


class Archive:
    """Uniform, streaming access to a zip, a tar (any compression) or a local folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "folder"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        else:
            try:
                with tarfile.open(self.path, "r:*"):
                    pass
            except (tarfile.TarError, OSError):
                raise DropError(f"{self.path.name} is neither a zip nor a tar archive nor a folder") from None
            self.kind = "tar"

    def members(self, want: Callable[[str], bool] = lambda _: True) -> Iterator[tuple[Member, bytes | None]]:
        """(member, bytes) in archive order. Bytes are read only for safe regular files that ``want`` accepts
        (None otherwise): unsafe members are never read."""
        if self.kind == "folder":
            for p in sorted(self.path.rglob("*")):
                rel = p.relative_to(self.path).as_posix()
                kind = "symlink" if p.is_symlink() else "dir" if p.is_dir() else "file" if p.is_file() else "device"
                yield Member(rel, kind, p.lstat().st_size), (p.read_bytes() if kind == "file" and want(rel) else None)
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as z:
                for info in z.infolist():
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    kind = "symlink" if is_link else "dir" if info.is_dir() else "file"
                    safe = unsafe_member_reason(info.filename, kind) is None
                    yield Member(info.filename, kind, info.file_size), (
                        z.read(info) if safe and kind == "file" and want(info.filename) else None)
        else:
            with tarfile.open(self.path, "r|*") as t:  # stream mode: one pass, member by member
                for info in t:
                    kind = ("symlink" if info.issym() else "hardlink" if info.islnk() else "dir" if info.isdir()
                            else "file" if info.isfile() else "device")
                    safe = unsafe_member_reason(info.name, kind) is None
                    read = safe and kind == "file" and want(info.name)
                    data = t.extractfile(info).read() if read else None  # type: ignore[union-attr]
                    yield Member(info.name, kind, info.size), data


# --- formats --------------------------------------------------------------------------------------------
def detect_format(archive: Archive) -> str:
    names = [m.name for m, _ in archive.members(want=lambda _: False)]
    if not names:
        raise DropError(f"{archive.path.name} is empty: it has no images and no metadata")
    if any(posixpath.basename(n) in ("metadata.jsonl", "metadata.csv") for n in names):
        return "imagefolder"
    stems = {n.rsplit(".", 1)[0] for n in names if n.lower().endswith((".txt", ".json"))}
    if any(n.lower().endswith(IMAGE_EXTS) and n.rsplit(".", 1)[0] in stems for n in names):
        return "webdataset"
    raise DropError(f"{archive.path.name}: no metadata.jsonl / metadata.csv (imagefolder) and no key.png + key.txt "
                    "pairs (WebDataset). See the README's dataset formats.")


def read_drop(path: Path) -> tuple[str, Iterator[RawRecord | RawReject]]:
    """The drop's format and its records; DropError when the drop as a whole is unusable."""
    archive = Archive(path)
    fmt = detect_format(archive)
    return fmt, (_imagefolder(archive) if fmt == "imagefolder" else _webdataset(archive))


def _parse_metadata(name: str, data: bytes) -> Iterator[tuple[int, dict[str, object] | None, str | None]]:
    """(line, row, reason): rows of metadata.jsonl / metadata.csv; a bad line gives a reason, not a crash."""
    if name.endswith(".jsonl"):
        for i, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield i, None, f"{name} line {i} is not valid UTF-8 (re-save the file as UTF-8)"
                continue
            except json.JSONDecodeError as e:
                yield i, None, f"{name} line {i} is not valid JSON ({e.msg})"
                continue
            yield i, row if isinstance(row, dict) else None, None if isinstance(row, dict) else (
                f"{name} line {i} is not a JSON object")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DropError(f"{name} is not valid UTF-8; re-save it as CSV UTF-8") from None
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield i, {(k or "").strip().lower(): v for k, v in row.items()}, None


def _imagefolder(archive: Archive) -> Iterator[RawRecord | RawReject]:
    # Pass 1: metadata (small) and the safe image names; unsafe members are reported here.
    meta_name, meta_bytes, images = None, b"", set()
    unsafe: list[RawReject] = []
    is_meta = lambda n: posixpath.basename(n) in ("metadata.jsonl", "metadata.csv")  # noqa: E731
    for m, data in archive.members(want=is_meta):
        reason = unsafe_member_reason(m.name, m.kind)
        if reason:
            unsafe.append(RawReject(m.name, reason))
        elif m.kind == "file" and posixpath.basename(m.name) in ("metadata.jsonl", "metadata.csv"):
            meta_name, meta_bytes = m.name, data or b""
        elif m.kind == "file" and m.name.lower().endswith(IMAGE_EXTS):
            images.add(m.name)
    yield from unsafe
    assert meta_name is not None
    root = posixpath.dirname(meta_name)
    rows: dict[str, list[dict[str, object]]] = {}
    for line, row, reason in _parse_metadata(posixpath.basename(meta_name), meta_bytes):
        if reason or row is None:
            yield RawReject(f"{meta_name}:{line}", reason or "bad row")
            continue
        caption_key = next((k for k in CAPTION_KEYS if k in row), None)
        if "file_name" not in row or caption_key is None:
            raise DropError(f"{meta_name} needs a 'file_name' and a 'text' (or 'caption') column; line {line} has "
                            f"{sorted(row)[:10]}")
        fname = str(row["file_name"])
        reason = unsafe_member_reason(fname)
        if reason:
            yield RawReject(f"{meta_name}:{line}", f"file_name '{fname}' is not a plain relative path")
            continue
        full = posixpath.normpath(posixpath.join(root, fname)) if root else posixpath.normpath(fname)
        extra = {k: v for k, v in row.items() if k not in ("file_name", caption_key)}
        rows.setdefault(full, []).append({"caption": row[caption_key], "extra": extra, "line": line})
    # Pass 2: stream the images, emit one record per caption row.
    seen = set()
    for m, data in archive.members(want=lambda n: n in rows):
        if m.name in rows and data is not None:
            seen.add(m.name)
            for r in rows[m.name]:
                yield RawRecord(m.name, data, r["caption"], r["extra"])  # type: ignore[arg-type]
    for name, rs in rows.items():
        if name not in seen:
            for r in rs:
                yield RawReject(f"{meta_name}:{r['line']}", f"metadata names '{name}', which is not in the drop")
    for name in sorted(images - set(rows)):  # counted, not silently dropped (the original stays in the drop)
        yield RawReject(name, f"image is not named in {posixpath.basename(meta_name)} (no row with this file_name); "
                              "add a row with its caption, or leave it out of the drop")


def _webdataset(archive: Archive) -> Iterator[RawRecord | RawReject]:
    """Samples are consecutive members sharing a key (the WebDataset convention); grouped on the fly."""
    pending: dict[str, dict[str, tuple[str, bytes]]] = {}

    def flush(key: str) -> Iterator[RawRecord | RawReject]:
        parts = pending.pop(key)
        img = next(((n, b) for ext, (n, b) in parts.items() if ext in IMAGE_EXTS), None)
        cap = parts.get(".txt") or parts.get(".json")
        if img is None:
            yield RawReject(key, "sample has a caption but no image (.png, .jpg, .jpeg, .webp)",
                            cap[1] if cap else b"")
            return
        if cap is None:
            yield RawReject(img[0], "sample has an image but no caption (.txt or .json)", img[1])
            return
        caption: bytes | str | None = cap[1]
        extra: dict[str, object] = {}
        if cap[0].endswith(".json"):
            try:
                doc = json.loads(cap[1].decode("utf-8"))
                caption = next((doc[k] for k in CAPTION_KEYS if k in doc), None)
                extra = {k: v for k, v in doc.items() if k not in CAPTION_KEYS}
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                yield RawReject(cap[0], "caption JSON is not valid UTF-8 JSON with a 'caption' or 'text' field",
                                img[1])
                return
        yield RawRecord(img[0], img[1], caption, extra)

    current = None
    for m, data in archive.members():
        reason = unsafe_member_reason(m.name, m.kind)
        if reason:
            yield RawReject(m.name, reason)
            continue
        if m.kind != "file" or data is None or "." not in posixpath.basename(m.name):
            continue
        key, ext = m.name.rsplit(".", 1)
        ext = "." + ext.lower()
        if current is not None and key != current and current in pending:
            yield from flush(current)
        current = key
        pending.setdefault(key, {})[ext] = (m.name, data)
    for key in list(pending):
        yield from flush(key)
