"""Readers for the image-caption formats data engineers bring, streamed and never extracted to disk.

- imagefolder: a zip or tar (or a local folder) with images and ``metadata.jsonl`` / ``metadata.csv``
  holding ``file_name`` and ``text`` (``caption`` accepted); extra columns are kept; several rows may
  name the same image (several captions).
- WebDataset tar shards: ``key.{png,jpg,jpeg,webp}`` with ``key.txt`` or ``key.json`` (a caption field).

Each reader yields `RawRecord`s (one per caption row) and `RawReject`s (a member or a metadata row that
cannot become a record, with the reason). Members with absolute paths, ``..``, links or devices are
rejected by name and their bytes are never read. Archives are read member by member; only the
metadata is held in memory.

Poison drops (`ArchiveLimits`): a member is read in chunks and no further than the member limit (an
image over it is a rejected record, its bytes unread); a zip member whose header promises more than
``ratio`` times its compressed size is refused before it is inflated; an archive whose members add up
to more than the total limit, or hold more members than the member-count limit, or whose metadata is
larger than its limit, is refused as a whole (`DropError`) before it fills memory or disk. A corrupt
(CRC), encrypted or unreadable member is a rejected record; a truncated or corrupt tar stream, a
metadata file that is a link or lies outside the archive, or a metadata CSV cell past the field limit is
a `DropError` naming what to fix. Every failure here is one of those two, never a crash.
"""

from __future__ import annotations

import csv
import io
import json
import lzma
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gen_engine.config import Settings
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
MiB = 1024 * 1024
CHUNK = MiB
RATIO_FLOOR = MiB  # zip members smaller than this are not judged by their compression ratio
TAR_RATIO_FLOOR = 64 * MiB  # nor is a compressed tar until it has expanded this far


@dataclass(frozen=True)
class ArchiveLimits:
    """How much a drop may make the reader hold or inflate (``GEN_INGEST_MAX_*``; see the module doc)."""

    member_bytes: int = 20 * MiB  # any member read (images and captions; the image size limit)
    metadata_bytes: int = 256 * MiB  # metadata.jsonl / metadata.csv, held in memory
    total_bytes: int = 64 * 1024 * MiB  # the archive's members added up, uncompressed
    members: int = 2_000_000
    ratio: float = 200.0  # uncompressed / compressed, per zip member and for a compressed tar

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(member_bytes=settings.ingest_max_bytes, metadata_bytes=settings.ingest_max_metadata_bytes,
                   total_bytes=settings.ingest_max_archive_bytes, members=settings.ingest_max_members,
                   ratio=settings.ingest_max_compression_ratio)


class TooLarge(Exception):
    """A member that is larger than it may be; its bytes are not read further."""


@dataclass
class Member:
    name: str
    kind: str  # file, dir, symlink, hardlink, device
    size: int
    refused: str | None = None  # why its bytes were not read (too large, corrupt, encrypted), if so


def _read_capped(f: IO[bytes], cap: int, name: str) -> bytes:
    """At most ``cap`` bytes of ``f``, in chunks; `TooLarge` as soon as there is more."""
    out, n = [], 0
    while chunk := f.read(min(CHUNK, cap + 1 - n)):
        out.append(chunk)
        n += len(chunk)
        if n > cap:
            raise TooLarge(f"archive member '{name}' is larger than {cap:,} bytes (the limit); its bytes were "
                           "not read")
    return b"".join(out)


class Archive:
    """Uniform, streaming access to a zip, a tar (any compression) or a local folder, within ``limits``."""

    def __init__(self, path: Path, limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        if self.path.is_dir():
            self.kind = "folder"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        else:
            try:
                with tarfile.open(self.path, "r:*"):
                    pass
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
                raise DropError(f"{self.path.name} is neither a zip nor a tar archive nor a folder") from None
            self.kind = "tar"

    def members(self, want: Callable[[str], bool] = lambda _: True,
                cap: Callable[[str], int] | None = None) -> Iterator[tuple[Member, bytes | None]]:
        """(member, bytes) in archive order. Bytes are read only for safe regular files that ``want`` accepts
        (None otherwise): unsafe members are never read. ``cap(name)``: the most bytes a member may have
        (default the member limit); a member that is refused carries the reason in ``Member.refused``.
        Raises `DropError` when the archive as a whole breaks a limit or cannot be read on."""
        cap = cap or (lambda _: self.limits.member_bytes)
        count = total = 0
        packed = self.path.stat().st_size if self.kind == "tar" else 0  # a compressed tar's size on disk

        def account(m: Member) -> None:
            nonlocal count, total
            count, total = count + 1, total + max(m.size, 0)
            lim = self.limits
            if count > lim.members:
                raise DropError(f"{self.path.name} has more than {lim.members:,} members (the limit); split it "
                                "into several drops")
            if total > lim.total_bytes:
                raise DropError(f"{self.path.name} expands to more than {lim.total_bytes:,} bytes (the limit; "
                                "an archive bomb or a drop to split into several)")
            if packed and total > TAR_RATIO_FLOOR and total > lim.ratio * packed:
                raise DropError(f"{self.path.name} expands {total / packed:.0f}x (more than {lim.ratio:.0f}x, "
                                "the compression-ratio limit): an archive bomb is refused")

        if self.kind == "folder":
            yield from self._folder(want, cap, account)
        elif self.kind == "zip":
            yield from self._zip(want, cap, account)
        else:
            yield from self._tar(want, cap, account)

    def _folder(self, want: Callable[[str], bool], cap: Callable[[str], int],
                account: Callable[[Member], None]) -> Iterator[tuple[Member, bytes | None]]:
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            kind = "symlink" if p.is_symlink() else "dir" if p.is_dir() else "file" if p.is_file() else "device"
            m = Member(rel, kind, p.lstat().st_size if kind == "file" else 0)
            account(m)
            data = None
            if kind == "file" and want(rel):
                try:
                    with open(p, "rb") as f:
                        data = _read_capped(f, cap(rel), rel)
                except TooLarge as e:
                    m.refused = str(e)
            yield m, data

    def _zip(self, want: Callable[[str], bool], cap: Callable[[str], int],
             account: Callable[[Member], None]) -> Iterator[tuple[Member, bytes | None]]:
        try:
            z = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise DropError(f"{self.path.name} is a damaged zip ({e}); re-create the archive") from None
        with z:
            for info in z.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                kind = "symlink" if is_link else "dir" if info.is_dir() else "file"
                m = Member(info.filename, kind, info.file_size)
                account(m)
                data = None
                if unsafe_member_reason(info.filename, kind) is None and kind == "file" and want(info.filename):
                    data, m.refused = self._zip_read(z, info, cap(info.filename))
                yield m, data

    def _zip_read(self, z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, why not): too large, a bomb by ratio, encrypted or corrupt."""
        name = info.filename
        if info.file_size > cap:
            return None, (f"archive member '{name}' is {info.file_size:,} bytes; the limit is {cap:,} (its bytes "
                          "were not read)")
        if info.file_size > RATIO_FLOOR and info.file_size > self.limits.ratio * max(info.compress_size, 1):
            return None, (f"archive member '{name}' would expand {info.file_size / max(info.compress_size, 1):.0f}x "
                          f"(more than {self.limits.ratio:.0f}x): a zip bomb is refused unread")
        if info.flag_bits & 0x1:
            return None, f"archive member '{name}' is encrypted; give an archive without a password"
        try:
            with z.open(info) as f:
                return _read_capped(f, cap, name), None
        except TooLarge as e:
            return None, str(e)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            return None, (f"archive member '{name}' cannot be read ({type(e).__name__}: {str(e)[:120]}); "
                          "the archive is corrupt: re-create it")

    def _tar(self, want: Callable[[str], bool], cap: Callable[[str], int],
             account: Callable[[Member], None]) -> Iterator[tuple[Member, bytes | None]]:
        last = "(start)"
        try:
            with tarfile.open(self.path, "r|*") as t:  # stream mode: one pass, member by member
                for info in t:
                    kind = ("symlink" if info.issym() else "hardlink" if info.islnk() else "dir" if info.isdir()
                            else "file" if info.isfile() else "device")
                    m = Member(info.name, kind, info.size if kind == "file" else 0)
                    account(m)
                    data = None
                    if unsafe_member_reason(info.name, kind) is None and kind == "file" and want(info.name):
                        if info.size > cap(info.name):
                            m.refused = (f"archive member '{info.name}' is {info.size:,} bytes; the limit is "
                                         f"{cap(info.name):,} (its bytes were not read)")
                        else:
                            data = _read_capped(t.extractfile(info), cap(info.name), info.name)  # type: ignore[arg-type]
                    last = info.name
                    yield m, data
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, TooLarge) as e:
            raise DropError(f"{self.path.name} is truncated or corrupt after member '{last}' ({type(e).__name__}: "
                            f"{str(e)[:120]}); re-create the archive") from None


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


def read_drop(path: Path, limits: ArchiveLimits | None = None) -> tuple[str, Iterator[RawRecord | RawReject]]:
    """The drop's format and its records; DropError when the drop as a whole is unusable."""
    archive = Archive(path, limits)
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
            except RecursionError:
                yield i, None, f"{name} line {i} nests JSON too deeply to read; give one flat object per line"
                continue
            yield i, row if isinstance(row, dict) else None, None if isinstance(row, dict) else (
                f"{name} line {i} is not a JSON object")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DropError(f"{name} is not valid UTF-8; re-save it as CSV UTF-8") from None
        reader = csv.DictReader(io.StringIO(text))
        try:
            for row in reader:
                yield reader.line_num, {(k or "").strip().lower(): v for k, v in row.items()}, None
        except csv.Error as e:
            raise DropError(f"{name} cannot be read past line {reader.line_num + 1} ({e}); a caption cell that "
                            "large is not a caption, or a quote is left open: fix that line") from None


def _imagefolder(archive: Archive) -> Iterator[RawRecord | RawReject]:
    # Pass 1: metadata (small) and the safe image names; unsafe members are reported here.
    meta_name, meta_bytes, images = None, b"", set()
    unsafe: list[RawReject] = []
    is_meta = lambda n: posixpath.basename(n) in ("metadata.jsonl", "metadata.csv")  # noqa: E731
    refused_meta = None
    for m, data in archive.members(want=is_meta, cap=lambda _: archive.limits.metadata_bytes):
        reason = unsafe_member_reason(m.name, m.kind)
        if reason:
            unsafe.append(RawReject(m.name, reason))
            refused_meta = refused_meta or (reason if is_meta(m.name) else None)
        elif m.kind == "file" and is_meta(m.name):
            if m.refused:
                raise DropError(f"{archive.path.name}: the metadata was not read: {m.refused} (metadata is "
                                f"held in memory, at most {archive.limits.metadata_bytes:,} bytes: split the drop)")
            meta_name, meta_bytes = m.name, data or b""
        elif m.kind == "file" and m.name.lower().endswith(IMAGE_EXTS):
            images.add(m.name)
    if meta_name is None:  # detect_format saw a metadata file, but none that may be read
        raise DropError(f"{archive.path.name}: its metadata file was not read ({refused_meta}); give "
                        "metadata.jsonl or metadata.csv as a regular file inside the archive")
    yield from unsafe
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
        if m.name in rows and m.refused:
            seen.add(m.name)
            for r in rows[m.name]:
                yield RawReject(f"{meta_name}:{r['line']}", m.refused)
        elif m.name in rows and data is not None:
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
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, RecursionError, TypeError):
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
        if m.refused:
            yield RawReject(m.name, m.refused)
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
