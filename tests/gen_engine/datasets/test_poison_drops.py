"""Poison drops: archive bombs, corrupt or encrypted members, unreadable metadata. Each is a rejected
record or a whole-drop `DropError` naming what to fix, never a crash or a worker out of memory, and the
dataset_ingest step files every drop it cannot ingest under failed/ (only a fault that may pass stays)."""

from __future__ import annotations

import io
import json
import stat
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from gen_engine.config import Settings
from gen_engine.datasets.readers import ArchiveLimits, DropError, RawRecord, RawReject, read_drop
from gen_engine.datasets.synth import generate
from gen_engine.errors import UserError, is_transient
from gen_engine.infra.storage import StorageUnavailable
from gen_engine.orchestration import ingest_and_file
from gen_engine.resources import resources

MiB = 1024 * 1024


def _png(seed: int = 0) -> bytes:
    rec, img = next(iter(generate(1, 48, seed)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _meta(*names: str) -> str:
    return "".join(json.dumps({"file_name": n, "text": f"caption of {n}"}) + "\n" for n in names)


def _items(path: Path, limits: ArchiveLimits | None = None) -> tuple[list[RawRecord], list[RawReject]]:
    _, items = read_drop(path, limits)
    got = list(items)
    return [i for i in got if isinstance(i, RawRecord)], [i for i in got if isinstance(i, RawReject)]


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _patch_zip(path: Path, name: str, *, flag_bits: int | None = None, file_size: int | None = None) -> None:
    """Rewrite fields of one member in both its local header and the central directory."""
    raw = bytearray(path.read_bytes())
    enc = name.encode()
    for sig, flag_at, size_at, name_at in ((b"PK\x03\x04", 6, 22, 30), (b"PK\x01\x02", 8, 24, 46)):
        at = raw.find(sig)
        while at >= 0:
            if raw[at + name_at: at + name_at + len(enc)] == enc:
                if flag_bits is not None:
                    raw[at + flag_at: at + flag_at + 2] = flag_bits.to_bytes(2, "little")
                if file_size is not None:
                    raw[at + size_at: at + size_at + 4] = file_size.to_bytes(4, "little")
            at = raw.find(sig, at + 4)
    path.write_bytes(bytes(raw))


def test_a_zip_bomb_member_is_a_rejected_record_and_is_never_inflated(tmp_path: Path) -> None:
    zeros = b"\0" * (40 * MiB)  # deflates to ~40 KB: a member over the 20 MiB limit, and a 1000x ratio
    path = _zip(tmp_path / "bomb.zip", {"a.png": _png(), "big.png": zeros, "ratio.png": zeros[: 5 * MiB],
                                        "metadata.jsonl": _meta("a.png", "big.png", "ratio.png").encode()})
    del zeros
    tracemalloc.start()
    ok, bad = _items(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r.source for r in ok] == ["a.png"]
    why = {r.source: r.reason for r in bad}
    assert "limit is 20,971,520" in why["metadata.jsonl:2"] and "not read" in why["metadata.jsonl:2"]
    assert "zip bomb" in why["metadata.jsonl:3"]
    assert peak < 4 * MiB  # neither member was inflated


def test_a_member_whose_header_lies_about_its_size_is_read_no_further(tmp_path: Path) -> None:
    path = _zip(tmp_path / "liar.zip", {"a.png": _png(), "b.png": b"\0" * (3 * MiB),
                                        "metadata.jsonl": _meta("a.png", "b.png").encode()})
    _patch_zip(path, "b.png", file_size=1000)  # claims 1,000 bytes; inflating stops there, the CRC fails
    ok, bad = _items(path)
    assert [r.source for r in ok] == ["a.png"]
    assert "cannot be read" in bad[0].reason and "corrupt" in bad[0].reason


def test_corrupt_and_encrypted_members_are_rejected_records(tmp_path: Path) -> None:
    png = _png()
    path = _zip(tmp_path / "bad.zip", {"a.png": _png(1), "crc.png": png, "secret.png": png + b"x",
                                       "metadata.jsonl": _meta("a.png", "crc.png", "secret.png").encode()},
                compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    at = raw.find(png)  # crc.png's stored bytes: flip one
    raw[at + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    _patch_zip(path, "secret.png", flag_bits=0x1)
    ok, bad = _items(path)
    why = {r.source: r.reason for r in bad}
    assert [r.source for r in ok] == ["a.png"]
    assert "BadZipFile" in why["metadata.jsonl:2"] and "re-create" in why["metadata.jsonl:2"]
    assert "encrypted" in why["metadata.jsonl:3"]


def test_a_compressed_tar_that_expands_past_the_limits_is_refused_as_a_whole(tmp_path: Path) -> None:
    path = _tar(tmp_path / "bomb.tar.gz", {**{f"{i}.png": b"\0" * (30 * MiB) for i in range(3)},
                                           "metadata.jsonl": _meta("0.png").encode()})
    with pytest.raises(DropError, match=r"expands \d+x .*archive bomb"):
        _items(path)
    with pytest.raises(DropError, match="expands to more than 1,048,576 bytes"):
        _items(path, ArchiveLimits(total_bytes=MiB, ratio=10**9))


def test_member_count_and_metadata_size_limits(tmp_path: Path) -> None:
    names = [f"{i}.png" for i in range(6)]
    path = _zip(tmp_path / "many.zip", {**{n: _png(i) for i, n in enumerate(names)},
                                        "metadata.jsonl": _meta(*names).encode()})
    assert len(_items(path)[0]) == 6
    with pytest.raises(DropError, match="more than 5 members"):
        _items(path, ArchiveLimits(members=5))
    with pytest.raises(DropError, match="metadata was not read.*at most 100 bytes"):
        _items(path, ArchiveLimits(metadata_bytes=100))


def test_a_truncated_tar_is_a_drop_error_naming_where_it_broke(tmp_path: Path) -> None:
    path = _tar(tmp_path / "cut.tar.gz", {**{f"{i}.png": _png(i) + bytes(range(256)) * 200 for i in range(4)},
                                          "metadata.jsonl": _meta("0.png").encode()})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DropError, match="truncated or corrupt"):
        _items(path)


@pytest.mark.parametrize("kind", ["symlink", "dotdot"])
def test_metadata_that_is_a_link_or_outside_the_archive_is_a_drop_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "meta.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.png", _png())
        if kind == "symlink":
            info = zipfile.ZipInfo("metadata.jsonl")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
        else:
            z.writestr("../metadata.jsonl", _meta("a.png"))
    with pytest.raises(DropError, match="metadata file was not read"):
        _items(path)


def test_deeply_nested_json_is_a_rejected_line_and_a_huge_csv_cell_a_drop_error(tmp_path: Path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    path = _zip(tmp_path / "deep.zip", {"a.png": _png(), "b.png": _png(1),
                                        "metadata.jsonl": (_meta("a.png") + deep + "\n" + _meta("b.png")).encode()})
    ok, bad = _items(path)
    assert [r.source for r in ok] == ["a.png", "b.png"]
    assert bad[0].source == "metadata.jsonl:2" and "nests JSON too deeply" in bad[0].reason
    wds = _tar(tmp_path / "wds.tar", {"k.png": _png(), "k.json": ('{"caption": ' + deep + "}").encode()}, "w")
    ok, bad = _items(wds)
    assert not ok and "caption JSON" in bad[0].reason
    huge = _zip(tmp_path / "csv.zip", {"a.png": _png(), "metadata.csv": (
        f"file_name,text\na.png,fine\na.png,\"{'x' * (17 * MiB)}\"\n").encode()}, compression=zipfile.ZIP_STORED)
    with pytest.raises(DropError, match="metadata.csv cannot be read past line 3"):
        _items(huge)


# --- the dataset_ingest step: nothing stays in raw/ to be retried forever ------------------------------
def _raw_drop(settings: Settings, name: str, data: bytes) -> dict[str, str]:
    store = resources(settings).storage
    key = f"raw/poison/{name}"
    store.put_bytes(settings.bucket_datasets, key, data)
    return {"key": key, "dataset": "poison"}


def _keys(settings: Settings, prefix: str) -> list[str]:
    return [o.key for o in resources(settings).storage.list(settings.bucket_datasets, prefix)]


def test_every_drop_that_cannot_be_ingested_leaves_raw_for_failed_with_a_report(
        s3_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = resources(s3_settings)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a.png", _png())
        z.writestr("../metadata.jsonl", _meta("a.png"))
    drop = _raw_drop(s3_settings, "linked-meta.zip", bad.read_bytes())
    with pytest.raises(UserError, match="metadata file was not read"):
        ingest_and_file(res, drop)
    assert _keys(s3_settings, "raw/poison/linked-meta") == []
    assert "failed/poison/linked-meta.zip.report.json" in _keys(s3_settings, "failed/poison/linked-meta")

    # A failure no check foresaw (here: a bug in a record check) files the drop too, with the error.
    good = _zip(tmp_path / "good.zip", {"a.png": _png(), "metadata.jsonl": _meta("a.png").encode()})
    drop = _raw_drop(s3_settings, "unforeseen.zip", good.read_bytes())

    def broken(*_a: object, **_k: object) -> None:
        raise AssertionError("a check that trips")

    monkeypatch.setattr("gen_engine.datasets.ingest.check_image", broken)
    with pytest.raises(UserError, match="could not be ingested .*AssertionError.*not retried"):
        ingest_and_file(res, drop)
    assert _keys(s3_settings, "raw/poison/unforeseen") == []
    report = json.loads(res.storage.get_bytes(s3_settings.bucket_datasets, "failed/poison/unforeseen.zip.report.json"))
    assert report["kind"] == "unexpected" and "a check that trips" in report["error"]

    # A fault that may pass (S3 not answering) leaves the drop in raw/ for the retry.
    drop = _raw_drop(s3_settings, "later.zip", good.read_bytes())

    def down(*_a: object, **_k: object) -> None:
        raise StorageUnavailable("S3 at 127.0.0.1 is not answering")

    monkeypatch.setattr("gen_engine.datasets.ingest.check_image", down)
    with pytest.raises(StorageUnavailable):
        ingest_and_file(res, drop)
    assert _keys(s3_settings, "raw/poison/later") == ["raw/poison/later.zip"]


def test_transient_errors_are_told_apart_from_the_rest() -> None:
    import sqlalchemy.exc

    assert is_transient(StorageUnavailable("down")) and is_transient(ConnectionRefusedError())
    assert is_transient(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed")))
    assert not is_transient(AssertionError()) and not is_transient(sqlalchemy.exc.IntegrityError("x", {}, None))
    assert not is_transient(UserError("bad csv"))
