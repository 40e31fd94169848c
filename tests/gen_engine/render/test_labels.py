"""Labels and provenance of delivered images: the visible label, the GB 45438 AIGC label, the signed C2PA
manifest on PNG, JPEG and WebP, `genengine verify`, object metadata within S3's limits."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gen_engine.cli import app
from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.infra.storage import MAX_METADATA_BYTES, Storage, metadata_size
from gen_engine.orchestration import run_campaign
from gen_engine.render import labels, provenance
from gen_engine.render.csvin import PromptCsv, Rejection, RowRules
from gen_engine.resources import resources

SIZES = [tuple(int(x) for x in s.split("x")) for s in Settings.model_fields["render_allowed_sizes"].default]
SIZES += [(512, 256), (256, 1024)]  # not allowed by default, but a deployment may allow them


def wcag_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2.x relative luminance, written out here independently of the code under test."""
    c = rgb.astype(np.float64) / 255
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[..., 0] + 0.7152 * c[..., 1] + 0.0722 * c[..., 2]


def contrast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    la, lb = wcag_luminance(a), wcag_luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


def backgrounds(w: int, h: int) -> dict[str, Image.Image]:
    rng = np.random.default_rng(w * 7 + h)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    return {"white": Image.new("RGB", (w, h), (255, 255, 255)), "black": Image.new("RGB", (w, h), (0, 0, 0)),
            "mid grey": Image.new("RGB", (w, h), (119, 119, 119)),
            "noise": Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)),
            "ramp": Image.fromarray(ramp.astype(np.uint8))}


@pytest.mark.parametrize("placement", ["corner", "edge"])
@pytest.mark.parametrize("text", ["AI-generated", "AI生成"])
def test_visible_label_is_tall_enough_and_legible_at_every_size(placement: str, text: str) -> None:
    for w, h in SIZES:
        for name, img in backgrounds(w, h).items():
            out, d = labels.draw(img, text, placement)
            arr, before = np.asarray(out), np.asarray(img)
            x0, y0, x1, y1 = d.ink
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (w, h, d)
            # Contrast of the text colour against every pixel under the label that is not text.
            px0, py0, px1, py1 = d.plate
            lay = labels.layout(text, w, h, placement)
            covered = np.zeros((h, w), bool)
            ox, oy = lay.origin
            covered[oy:oy + lay.mask.shape[0], ox:ox + lay.mask.shape[1]] = lay.mask > 0
            plate = arr[py0:py1, px0:px1]
            under = plate[~covered[py0:py1, px0:px1]]
            assert contrast(np.array(d.text_rgb), under).min() >= 4.5, f"{w}x{h} {name}"
            # The text's height: rows with pixels closer to the text colour than any background pixel is.
            textish = np.flatnonzero((contrast(np.array(d.text_rgb), plate) < 2.0).any(axis=1))
            assert textish.size and textish[-1] - textish[0] + 1 >= 0.05 * min(w, h), f"{w}x{h} {name}"
            # Nothing outside the label changed.
            outside = np.ones((h, w), bool)
            outside[py0:py1, px0:px1] = False
            assert np.array_equal(arr[outside], before[outside])
    assert labels.draw(backgrounds(256, 256)["white"], text, placement)[1].plate_alpha == 0.0  # no plate needed


def test_label_text_follows_the_prompt_script_unless_configured() -> None:
    assert labels.label_text("一颗红色的心") == "AI生成" and labels.label_text("赤いハート") == "AI生成"
    assert labels.label_text("빨간 하트") == "AI 생성" and labels.label_text("a red heart") == "AI-generated"
    assert labels.label_text("قلب أحمر") == "AI-generated"
    assert labels.label_text("红心", "Made with AI") == "Made with AI"


def test_label_column_and_fit_are_checked_per_row(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("prompt,size,label\na heart,256x256,corner\na star,,edge\na moon,,\na sun,,sideways\n"
                   "a cloud,64x64,CORNER\n", encoding="utf-8")
    rules = RowRules(native_size=16, default_label="none", label_text="")
    got = list(PromptCsv(csv, "c.csv", rules))
    by_row = {g.row_number: g for g in got}
    assert by_row[2].label == "corner" and by_row[6].label == "corner" and by_row[4].label == "none"
    assert isinstance(by_row[3], Rejection) and "wider than a 16x16 image" in by_row[3].reason
    assert isinstance(by_row[5], Rejection) and "label 'sideways'" in by_row[5].reason
    defaulted = list(PromptCsv(csv, "c.csv", RowRules(native_size=64, default_label="edge")))
    assert [g.label for g in defaulted if not isinstance(g, Rejection)] == ["corner", "edge", "edge", "corner"]


# --- rendered campaigns -----------------------------------------------------------------------------
CSV = ("prompt,seed,count,asset_name,size,format,label\n"
       "a red heart sticker,1,1,heart,256x256,png,corner\n"
       "一颗红色的心,2,1,xin,128x128,jpeg,edge\n"
       "a blue star,3,1,star,64x64,webp,\n")
PROMPTS = {"heart": "a red heart sticker", "xin": "一颗红色的心", "star": "a blue star"}


def render(storage: Storage, settings: Settings, model_id: str, name: str, csv: str = CSV, **kw: object) -> dict:
    storage.put_bytes("campaigns", f"claimed/{name}.csv", csv.encode("utf-8"))
    return run_campaign(resources(settings), f"s3://campaigns/claimed/{name}.csv", name, model=model_id,
                        progress=False, **kw)


def change_one_pixel(data: bytes, fmt: str) -> bytes:
    """The same file with its pixel data changed and everything else (the manifest included) kept.
    PNG: exactly one pixel (IDAT re-packed); JPEG and WebP: one bit of the compressed image data."""
    if fmt == "png":
        img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        img[0, 0] ^= 0x01
        raw = b"".join(b"\x00" + row.tobytes() for row in img)
        body = zlib.compress(raw)
        idat = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        out, pos, done = [data[:8]], 8, False
        while pos < len(data):
            n = struct.unpack(">I", data[pos:pos + 4])[0]
            kind, chunk = data[pos + 4:pos + 8], data[pos:pos + 12 + n]
            if kind == b"IDAT":
                if not done:
                    out.append(idat)
                    done = True
            else:
                out.append(chunk)
            pos += 12 + n
        return b"".join(out)
    marker = b"\xff\xda" if fmt == "jpeg" else b"VP8"  # start of scan / the VP8(L) bitstream chunk
    at = data.index(marker) + 64
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def test_every_format_carries_a_valid_manifest_that_one_changed_pixel_breaks(
        storage: Storage, s3_settings: Settings, model_id: str) -> None:
    summary = render(storage, s3_settings, model_id, "labelled")
    assert summary["counts"]["rows_accepted"] == 3
    prefix = summary["prefix"]
    manifest = storage.get_bytes("renders", prefix + "manifest.csv").decode("utf-8-sig").splitlines()
    cols = manifest[0].split(",")
    rows = {r.split(",")[cols.index("asset")]: dict(zip(cols, r.split(","), strict=True)) for r in manifest[1:]}
    assert {a: (r["label"], r["c2pa"]) for a, r in rows.items()} == {
        "heart": ("corner", "signed"), "xin": ("edge", "signed"), "star": ("none", "signed")}
    for asset, fmt, ext in (("heart", "png", "png"), ("xin", "jpeg", "jpg"), ("star", "webp", "webp")):
        data = storage.get_bytes("renders", f"{prefix}images/{asset}_0.{ext}")
        v = provenance.verify(data, asset)
        assert v.ok, v.problems
        assert v.c2pa["state"] == "Valid" and v.c2pa["development_chain"]
        assert v.c2pa["actions"] == [{"action": "c2pa.created", "digitalSourceType":
                                      "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}]
        assert v.c2pa["render"]["model_id"] == model_id
        assert v.c2pa["render"]["image_id"] == f"{summary['run_id']}/{asset}_0"
        assert v.c2pa["render"]["prompt_sha256"] == hashlib.sha256(PROMPTS[asset].encode()).hexdigest()
        assert v.aigc == {"Label": "1", "ContentProducer": s3_settings.provenance_producer,
                          "ProduceID": f"{summary['run_id']}/{asset}_0", "ReservedCode1": "", "ContentPropagator": "",
                          "PropagateID": "", "ReservedCode2": ""}
        assert v.visible_label == rows[asset]["label"]
        tampered = provenance.verify(change_one_pixel(data, fmt), asset)
        assert tampered.c2pa["present"] and not tampered.ok
        assert any("dataHash.mismatch" in f for f in tampered.c2pa["failures"]), tampered.c2pa["failures"]
        if fmt == "png":
            a = np.asarray(Image.open(io.BytesIO(data)))
            b = np.asarray(Image.open(io.BytesIO(change_one_pixel(data, fmt))))
            assert (a != b).any(axis=-1).sum() == 1
    heart = Image.open(io.BytesIO(storage.get_bytes("renders", f"{prefix}images/heart_0.png")))
    assert heart.size == (256, 256)
    assert summary["labels"] == {"c2pa_signed": 3, "visible_label": 2}
    assert "3 of 3 carry a signed C2PA manifest, 2 a visible label" in storage.get_bytes(
        "renders", prefix + "index.html").decode()


def test_a_campaigns_label_applies_to_rows_that_name_none(storage: Storage, s3_settings: Settings,
                                                          model_id: str) -> None:
    summary = render(storage, s3_settings, model_id, "edged", label="edge")
    meta = {a: storage.stat("renders", f"{summary['prefix']}images/{a}_0.{x}").metadata["label"]
            for a, x in (("heart", "png"), ("xin", "jpg"), ("star", "webp"))}
    assert meta == {"heart": "corner", "xin": "edge", "star": "edge"}
    with pytest.raises(UserError, match="label 'diagonal'"):
        render(storage, s3_settings, model_id, "diagonal", label="diagonal")


def test_verify_command_exit_status(storage: Storage, s3_settings: Settings, model_id: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    summary = render(storage, s3_settings, model_id, "verified")
    key = f"{summary['prefix']}images/heart_0.png"
    good = tmp_path / "good.png"
    good.write_bytes(storage.get_bytes("renders", key))
    bad = tmp_path / "bad.png"
    bad.write_bytes(change_one_pixel(good.read_bytes(), "png"))
    stripped = tmp_path / "stripped.png"  # re-saved by an editor: the manifest is gone, the lineage stays
    img = Image.open(good)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("gen_lineage", img.info["gen_lineage"])
    img.save(stripped, pnginfo=info)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    root = tmp_path / "root.pem"
    root.write_bytes(provenance.dev_root(s3_settings))
    other = tmp_path / "other.pem"
    other.write_bytes(provenance.dev_root(Settings(local_dir=tmp_path / "elsewhere")))
    monkeypatch.setenv("GEN_LOCAL_DIR", str(s3_settings.local_dir))
    for k, v in {"GEN_S3_ENDPOINT": s3_settings.s3_address,
                 "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
                 "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value()}.items():
        monkeypatch.setenv(k, v)
    cli = CliRunner()
    for args, code, says in (([str(good)], 0, "ok"), ([f"s3://renders/{key}"], 0, "AIGC label (GB 45438)"),
                             ([key], 0, "DEVELOPMENT chain"), ([str(good), "--trust", str(root)], 0, "trusted"),
                             ([str(good), "--trust", str(other)], 1, "none of the trust anchors"),
                             ([str(bad)], 1, "does not validate"), ([str(stripped)], 1, "no C2PA manifest"),
                             ([str(plain)], 2, "no provenance claimed")):
        res = cli.invoke(app, ["verify", *args])
        assert res.exit_code == code, (args, res.output)
        assert says in " ".join(res.output.split()), (args, res.output)  # rich wraps at 80 columns
    hostile = tmp_path / "hostile.png"  # text from the file is printed as it is, never as terminal markup
    from gen_engine.render import imagemeta

    hostile.write_bytes(imagemeta.encode(Image.new("RGB", (8, 8)), "png", "p", {}, {"run_id": "[red]r[/red]"},
                                         labels.aigc_json(labels.aigc_label("[bold]ACME[/bold]", "x"))))
    res = cli.invoke(app, ["verify", str(hostile)])
    assert "[bold]ACME[/bold]" in res.output and "[red]r[/red]" in res.output, res.output
    res = cli.invoke(app, ["verify", str(good), "--json"])
    report = json.loads(res.output)
    assert report["ok"] and report["lineage"]["image_id"] == f"{summary['run_id']}/heart_0"


def test_a_third_party_reader_finds_the_iptc_and_aigc_labels(storage: Storage, s3_settings: Settings,
                                                             model_id: str, tmp_path: Path, debian) -> None:
    tool = debian("exiftool", "libimage-exiftool-perl", "the third-party reader test")
    summary = render(storage, s3_settings, model_id, "exif")
    files = []
    for name in ("heart_0.png", "xin_0.jpg", "star_0.webp"):
        (tmp_path / name).write_bytes(storage.get_bytes("renders", summary["prefix"] + "images/" + name))
        files.append(str(tmp_path / name))
    out = json.loads(subprocess.run([tool, "-j", "-G1", "-XMP:all", *files], capture_output=True, check=True,
                                    text=True).stdout)
    assert len(out) == 3
    for tags in out:
        assert tags["XMP-iptcExt:DigitalSourceType"].endswith("/trainedAlgorithmicMedia"), tags
        aigc = json.loads(tags["XMP-TC260:Aigc"])
        assert aigc["Label"] == "1" and aigc["ContentProducer"] == s3_settings.provenance_producer
        assert aigc["ProduceID"].startswith(summary["run_id"] + "/")
    assert "一颗红色的心" in json.dumps(out, ensure_ascii=False)  # the prompt, intact, in dc:description


def test_object_metadata_stays_within_s3s_limit_for_long_non_latin_prompts(
        storage: Storage, s3_settings: Settings, model_id: str) -> None:
    zh = ("红色的心形贴纸在白色背景上" * 40)[:500]
    emoji = ("🎉❤️" * 200)[:500]
    csv = f"prompt,seed,asset_name\n{zh},1,zh\n{emoji},2,emoji\n"
    summary = render(storage, s3_settings, model_id, "longprompts", csv)
    assert summary["counts"]["rows_accepted"] == 2
    for asset, prompt in (("zh", zh), ("emoji", emoji)):
        key = f"{summary['prefix']}images/{asset}_0.png"
        meta = storage.stat("renders", key).metadata
        assert metadata_size(meta) <= MAX_METADATA_BYTES, metadata_size(meta)
        assert resources(s3_settings).lineage.trace(key)["prompt"] == prompt  # the prompt, whole, in lineage
    with pytest.raises(ValueError, match="over S3's 2048"):
        storage.put_bytes("renders", "too-much", b"x", metadata={"prompt": zh})


def test_internal_keys_can_be_left_out_of_delivered_files(storage: Storage, s3_settings: Settings,
                                                           model_id: str) -> None:
    private = s3_settings.model_copy(update={"render_embed_source_keys": False})
    summary = render(storage, private, model_id, "private")
    key = f"{summary['prefix']}images/heart_0.png"
    v = provenance.verify(storage.get_bytes("renders", key), key)
    assert v.ok and "csv_key" not in v.lineage and "object_key" not in v.lineage
    assert "claimed/private.csv" not in storage.get_bytes("renders", key).decode("latin-1")
    trace = resources(private).lineage.trace(key)
    assert trace["csv_key"] == "campaigns/claimed/private.csv" and trace["object_key"] == key
    public = render(storage, s3_settings, model_id, "private")
    assert public["run_id"] != summary["run_id"]  # a labelling setting is part of the run's identity


def test_signing_settings(tmp_path: Path, s3_settings: Settings) -> None:
    chain, key = provenance._dev_bundle(s3_settings.local_dir)
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    given = Settings(local_dir=tmp_path / "l1", c2pa_cert_chain=str(tmp_path / "chain.pem"),
                     c2pa_private_key=str(tmp_path / "key.pem"))
    assert provenance.load_signer(given) is provenance.load_signer(given)  # made once per process
    assert not (tmp_path / "l1" / "c2pa").exists()  # no development chain where a real one is set
    inline = Settings(local_dir=tmp_path / "l2", c2pa_cert_chain=chain.decode(), c2pa_private_key=key.decode())
    assert provenance.load_signer(inline) is not None
    with pytest.raises(UserError, match="set both"):
        provenance.load_signer(Settings(local_dir=tmp_path, c2pa_cert_chain=str(tmp_path / "chain.pem")))
    with pytest.raises(UserError, match="no file at"):
        provenance.load_signer(Settings(local_dir=tmp_path, c2pa_cert_chain=str(tmp_path / "missing.pem"),
                                        c2pa_private_key="x"))


def kms_signer(settings: Settings) -> object:
    """A callback signer as a KMS would give one: the key stays in the callback (here: a local key)."""
    import c2pa
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    chain, key_pem = provenance._dev_bundle(settings.local_dir)
    key = serialization.load_pem_private_key(key_pem, None)
    calls.append(1)

    def sign(data: bytes) -> bytes:
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))  # type: ignore[union-attr]
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return c2pa.Signer.from_callback(sign, c2pa.C2paSigningAlg.ES256, chain.decode())


calls: list[int] = []


def test_a_callback_signer_plugs_in(tmp_path: Path) -> None:
    settings = Settings(local_dir=tmp_path, c2pa_signer=f"{__name__}:kms_signer")
    signer = provenance.load_signer(settings)
    assert calls
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, "PNG")
    manifest = provenance.manifest_definition("x.png", producer="p", model_id="m", image_id="r/x_0", seed=1,
                                              prompt_sha256="0" * 64)
    v = provenance.verify(provenance.sign(png.getvalue(), "png", manifest, signer), "x.png")
    assert v.c2pa["state"] == "Valid" and not v.problems


def test_the_png_level_trades_bytes_for_speed_and_never_pixels() -> None:
    """`render_png_level` reaches the encoder; every level decodes to the same pixels, with all provenance."""
    from gen_engine.render import imagemeta
    from gen_engine.render.shard import RenderEnv

    rng = np.random.default_rng(3)
    img = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((256, 256))
    files = {lvl: imagemeta.encode(img, "png", "a red heart", {"Seed": 1}, {"run_id": "r"}, png_level=lvl)
             for lvl in (0, 2, 9)}
    assert len(files[0]) > len(files[2]) > len(files[9])
    for data in files.values():
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(img))
        assert imagemeta.read_provenance(data)["lineage"]["run_id"] == "r"
    env = RenderEnv.from_settings(None, {}, None, Settings(render_png_level=9, render_c2pa=False))
    assert env.png_level == 9 and RenderEnv.from_settings(None, {}, None, Settings(render_c2pa=False)).png_level == 2
