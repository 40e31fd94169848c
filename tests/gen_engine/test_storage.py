"""Storage against a real SeaweedFS: round trips, listing, the claim race, and the clear errors."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from gen_engine.infra.services import LocalS3, S3Ports
from gen_engine.infra.storage import ObjectNotFound, Storage, StorageAuthError, StorageUnavailable


def test_bytes_round_trip_with_metadata(storage: Storage) -> None:
    meta = {"prompt": "a red circle — on teal ✓", "seed": "42"}
    storage.put_bytes("renders", "t/rt/a.png", b"\x89PNG data", content_type="image/png", metadata=meta)
    assert storage.get_bytes("renders", "t/rt/a.png") == b"\x89PNG data"
    info = storage.stat("renders", "t/rt/a.png")
    assert info.size == 9
    assert info.metadata == meta  # non-ASCII survives the ASCII-only header round trip


def test_large_file_streams_up_and_down(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * (20 * 4096 + 1))  # ~20 MiB: two multipart parts
    storage.put_file("datasets", "t/big.bin", src, metadata={"kind": "test"})
    out = storage.get_file("datasets", "t/big.bin", tmp_path / "back.bin")
    assert out.read_bytes() == src.read_bytes()
    assert storage.stat("datasets", "t/big.bin").metadata == {"kind": "test"}


def test_list_by_prefix_is_sorted_and_confined(storage: Storage) -> None:
    for k in ["t/list/b.txt", "t/list/a.txt", "t/list/sub/c.txt", "t/listother/x.txt"]:
        storage.put_bytes("datasets", k, b"x")
    assert [o.key for o in storage.list("datasets", "t/list/")] == ["t/list/a.txt", "t/list/b.txt",
                                                                    "t/list/sub/c.txt"]


def test_missing_object_is_a_clear_error(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound, match=r"s3://datasets/t/nope does not exist"):
        storage.get_bytes("datasets", "t/nope")
    assert not storage.exists("datasets", "t/nope")


def test_claim_race_has_exactly_one_winner(storage: Storage, at_once) -> None:
    storage.put_bytes("campaigns", "incoming/race.csv", b"prompt\nhello\n")
    wins = [i for i, won in enumerate(at_once(8, lambda i: storage.claim("campaigns", "incoming/race.csv",
                                                                        "claimed/race.csv"))) if won is True]
    assert len(wins) == 1
    assert not storage.exists("campaigns", "incoming/race.csv")
    assert storage.get_bytes("campaigns", "claimed/race.csv") == b"prompt\nhello\n"
    assert not storage.exists("campaigns", "claimed/race.csv.claim")
    # A later file of the same name can be claimed again.
    storage.put_bytes("campaigns", "incoming/race.csv", b"prompt\nagain\n")
    assert storage.claim("campaigns", "incoming/race.csv", "claimed/race.csv")
    assert not storage.claim("campaigns", "incoming/race.csv", "claimed/race.csv")  # already gone


def test_a_claim_left_by_a_killed_worker_expires_and_is_taken_over(storage: Storage, s3_settings) -> None:
    """SIGKILL during a claim (after its marker, before the move): the CSV is blocked only for the lease,
    then claimed by the next claimer; nothing is lost or duplicated."""
    import json
    import os
    import signal
    import subprocess
    import sys

    storage.put_bytes("campaigns", "incoming/killed.csv", b"prompt\nkilled\n")
    child = subprocess.Popen([sys.executable, "-c", f"""
import time
from gen_engine.config import Settings
from gen_engine.infra.storage import Storage
st = Storage.from_settings(Settings(s3_endpoint={s3_settings.s3_endpoint!r},
    s3_access_key={s3_settings.s3_access_key.get_secret_value()!r},
    s3_secret_key={s3_settings.s3_secret_key.get_secret_value()!r}, local_dir={str(s3_settings.local_dir)!r}))
st.client.copy_object = lambda *a, **k: time.sleep(600)  # killed here: marker written, nothing moved
st.claim("campaigns", "incoming/killed.csv", "claimed/killed.csv", lease_s=2.0)
"""], env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 60
        while not storage.exists("campaigns", "claimed/killed.csv.claim"):
            assert child.poll() is None and time.monotonic() < deadline, "the child never wrote its marker"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        marker = json.loads(storage.get_bytes("campaigns", "claimed/killed.csv.claim"))
        assert marker["owner"].endswith(f":{child.pid}") and marker["expires_at"] > time.time() - 5
        assert not storage.claim("campaigns", "incoming/killed.csv", "claimed/killed.csv")  # still leased
        time.sleep(max(0.0, marker["expires_at"] - time.time()) + 0.2)
        assert storage.claim("campaigns", "incoming/killed.csv", "claimed/killed.csv")  # taken over
    finally:
        if child.poll() is None:
            child.kill()
    assert storage.get_bytes("campaigns", "claimed/killed.csv") == b"prompt\nkilled\n"
    assert not storage.exists("campaigns", "incoming/killed.csv")
    assert not storage.exists("campaigns", "claimed/killed.csv.claim")


def test_an_old_style_marker_with_no_expiry_does_not_block_forever(storage: Storage) -> None:
    storage.put_bytes("campaigns", "incoming/legacy.csv", b"prompt\nx\n")
    storage.put_bytes("campaigns", "claimed/legacy.csv.claim", b"0123456789abcdef")  # a bare token, as before
    assert storage.claim("campaigns", "incoming/legacy.csv", "claimed/legacy.csv")


def test_a_claim_moves_only_the_listed_content_and_never_deletes_a_newer_upload(storage: Storage,
                                                                                 monkeypatch) -> None:
    old = storage.put_bytes("campaigns", "incoming/newer.csv", b"prompt\nold\n").strip('"')
    storage.put_bytes("campaigns", "incoming/newer.csv", b"prompt\nnew\n")
    # Listed before the re-upload: the claim of the old content fails and the new one stays for next time.
    assert not storage.claim("campaigns", "incoming/newer.csv", "claimed/newer.old.csv", etag=old)
    assert storage.get_bytes("campaigns", "incoming/newer.csv") == b"prompt\nnew\n"
    assert not storage.exists("campaigns", "claimed/newer.old.csv")
    # Re-uploaded between the copy and the delete: the copy is the listed content, the newer upload stays.
    etag = storage.stat("campaigns", "incoming/newer.csv").etag
    real_delete_if = storage.delete_if

    def upload_then_delete(bucket: str, key: str, tag: str) -> bool:
        if key == "incoming/newer.csv":
            storage.put_bytes("campaigns", key, b"prompt\nnewest\n")
        return real_delete_if(bucket, key, tag)

    monkeypatch.setattr(storage, "delete_if", upload_then_delete)
    assert storage.claim("campaigns", "incoming/newer.csv", "claimed/newer.new.csv", etag=etag)
    assert storage.get_bytes("campaigns", "claimed/newer.new.csv") == b"prompt\nnew\n"
    assert storage.get_bytes("campaigns", "incoming/newer.csv") == b"prompt\nnewest\n"
    assert not storage.exists("campaigns", "claimed/newer.new.csv.claim")


def test_presigned_url_serves_the_object(storage: Storage) -> None:
    storage.put_bytes("renders", "t/presigned.txt", b"hello gallery")
    url = storage.presigned_get("renders", "t/presigned.txt")
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback test server)
        assert resp.read() == b"hello gallery"


def test_wrong_credentials_give_one_clear_error(s3_server: LocalS3) -> None:
    bad = Storage(s3_server.endpoint, s3_server._access_key, "wrong-secret", retries=3)
    t0 = time.monotonic()
    with pytest.raises(StorageAuthError) as e:
        bad.put_bytes("datasets", "t/x", b"x")
    assert s3_server.endpoint in str(e.value) and "AWS_SECRET_ACCESS_KEY" in str(e.value)
    assert time.monotonic() - t0 < 2, "credentials errors must not be retried"


def test_stopped_server_gives_one_clear_error(tmp_path: Path) -> None:
    port = S3Ports.free().s3  # nothing listens there
    store = Storage(f"127.0.0.1:{port}", "k", "s", retries=3)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        store.get_bytes("datasets", "x")
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "GEN_S3_ENDPOINT" in msg and "Connection refused" in msg
    assert "Traceback" not in msg
    assert time.monotonic() - t0 < 5, "bounded retries, not a long stack of them"


def test_missing_credentials_are_named(s3_settings) -> None:
    settings = s3_settings.model_copy(update={"s3_access_key": None})
    with pytest.raises(StorageAuthError, match="AWS_ACCESS_KEY_ID"):
        Storage.from_settings(settings)
