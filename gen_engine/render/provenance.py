"""Signed C2PA manifests in every rendered image, and reading back all an image says about itself.

The EU AI Act (Article 50, from 2026-08-02) asks that generated images be marked in a machine-readable,
interoperable way; the industry's answer is C2PA. Each image gets a manifest with:
- ``c2pa.actions``: one ``c2pa.created`` action, digital source type ``trainedAlgorithmicMedia``, this
  software as the agent;
- ``org.gen-engine.render``: the model id, the image id, the seed and the prompt's SHA-256 (a hash,
  not the prompt: the prompt is in the file's own metadata, which the marketing team controls).
The manifest is signed with the deployment's certificate and hashes the file's bytes, so any change to
the pixels (or the metadata) breaks validation.

The signer, in this order (`load_signer`):
1. ``c2pa_signer``: ``module:function`` returning a ``c2pa.Signer``; the hook for a KMS or HSM, whose
   key never leaves it (``c2pa.Signer.from_callback(sign_bytes, alg, cert_chain_pem)``);
2. ``c2pa_cert_chain`` + ``c2pa_private_key`` (paths or PEM text, from the environment or a secrets
   mount; never logged);
3. otherwise a development chain (a root and a signer certificate, both named "DEVELOPMENT ONLY")
   generated once under ``<local_dir>/c2pa/`` and reused: manifests validate, but no trust list knows
   it, and `verify` says so.

`verify` reads a file back: the C2PA validation state, the IPTC digital source type, the GB 45438
AIGC label, the visible-label flag and the embedded lineage, with ``ok`` False when the image claims
provenance that does not validate.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.render import imagemeta

log = logging.getLogger(__name__)
ASSERTION = "org.gen-engine.render"
DEV_BUNDLE = Path("c2pa") / "dev-signer.pem"
DEV_MARK = "gen-engine DEVELOPMENT ONLY - not for publication"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", re.S)
_lock = threading.Lock()
_signers: dict[str, Any] = {}
_UNTRUSTED = "signingCredential.untrusted"


def pem_text(value: str | None, what: str = "c2pa_trust_anchors") -> bytes | None:
    """PEM text given inline, or read from a path."""
    if not value:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"{what}: no file at {path}; give a PEM file's path or the PEM text")
    return path.read_bytes()


def _new_dev_chain() -> bytes:
    """A fresh development key, signer certificate and root (PEM, in that order)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")

    def cert(cn: str, key: Any, issuer: x509.Name | None, issuer_key: Any, days: int, ca: bool) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_MARK)])
        on = {"key_cert_sign", "crl_sign"} if ca else {"digital_signature"}
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
             .add_extension(x509.KeyUsage(**{f: f in on for f in flags}), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if not ca:  # the C2PA signer profile: an end-entity certificate with an allowed extended key usage
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                critical=False))
        return b.sign(issuer_key, hashes.SHA256())

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = cert("gen-engine dev root", root_key, None, root_key, 3650, True)
    leaf = cert("gen-engine dev signer", key, root.subject, root_key, 730, False)
    pem = serialization.Encoding.PEM
    return (key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            + leaf.public_bytes(pem) + root.public_bytes(pem))


def _dev_bundle(local_dir: Path) -> tuple[bytes, bytes]:
    """The development chain and key (generated on first use, then reused): one file, written atomically,
    so two processes starting at once never pair one's key with the other's certificate."""
    path = local_dir / DEV_BUNDLE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_new_dev_chain())
        try:
            os.link(tmp, path)  # fails if another process got there first: theirs is kept
            log.warning("generated a DEVELOPMENT C2PA signing chain at %s: images validate but are signed by no "
                        "trusted authority; set GEN_C2PA_CERT_CHAIN and GEN_C2PA_PRIVATE_KEY for publication", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(path.read_bytes())]
    key_pem = b"".join(b for b in blocks if b"PRIVATE KEY" in b.split(b"\n", 1)[0])
    chain = b"".join(b for b in blocks if b.startswith(b"-----BEGIN CERTIFICATE"))
    return chain, key_pem


def dev_root(settings: Settings) -> bytes:
    """The development root certificate (for tests and for `verify --trust` against the dev chain)."""
    chain, _ = _dev_bundle(settings.local_dir)
    return [m.group(0) for m in _PEM_BLOCK.finditer(chain)][-1]


def load_signer(settings: Settings) -> Any:
    """The process's signer for these settings (made once; see the module docstring for the order)."""
    import c2pa

    key_text = settings.c2pa_private_key.get_secret_value() if settings.c2pa_private_key else ""
    ident = hashlib.sha256(json.dumps([settings.c2pa_signer, settings.c2pa_cert_chain, key_text,
                                       settings.c2pa_signing_alg, settings.c2pa_tsa_url,
                                       str(settings.local_dir.resolve())]).encode()).hexdigest()
    with _lock:
        if ident in _signers:
            return _signers[ident]
        if settings.c2pa_signer:
            module, _, fn = settings.c2pa_signer.partition(":")
            if not fn:
                raise UserError(f"c2pa_signer '{settings.c2pa_signer}' must read 'module:function'")
            signer = getattr(importlib.import_module(module), fn)(settings)
        else:
            chain = pem_text(settings.c2pa_cert_chain, "c2pa_cert_chain")
            key = pem_text(key_text, "c2pa_private_key")
            if bool(chain) != bool(key):
                raise UserError("set both c2pa_cert_chain and c2pa_private_key (GEN_C2PA_CERT_CHAIN, "
                                "GEN_C2PA_PRIVATE_KEY), or neither for the development chain")
            if not chain:
                chain, key = _dev_bundle(settings.local_dir)
            alg = settings.c2pa_signing_alg.lower()
            try:
                signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg.encode(), chain, key, settings.c2pa_tsa_url))
            except c2pa.C2paError as e:  # the library's message names no secret, only what is wrong
                raise UserError(f"the C2PA signing key or certificate chain was refused: {e}") from None
        _signers[ident] = signer
        return signer



@functools.cache
def _context() -> Any:
    """Builder settings: no thumbnail (it would add a second, larger image to every file and cost tens of
    milliseconds per image; a campaign's images are their own thumbnails)."""
    import c2pa

    return c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})


def manifest_definition(title: str, *, producer: str, model_id: str, image_id: str, seed: int,
                        prompt_sha256: str) -> dict[str, Any]:
    from gen_engine import __version__

    agent = {"name": "gen-engine", "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": imagemeta.DIGITAL_SOURCE_TYPE, "softwareAgent": agent,
                "description": f"rendered by {producer} with model {model_id}"}]}},
            {"label": ASSERTION, "data": {"producer": producer, "model_id": model_id, "image_id": image_id,
                                          "seed": seed, "prompt_sha256": prompt_sha256}},
        ],
    }


def sign(data: bytes, fmt: str, manifest: dict[str, Any], signer: Any) -> bytes:
    """The file with its manifest embedded (PNG caBX chunk, JPEG APP11, WebP C2PA chunk)."""
    import c2pa

    out = io.BytesIO()
    with c2pa.Builder(manifest, _context()) as builder:
        builder.sign(signer, imagemeta.content_type(fmt), io.BytesIO(data), out)
    return out.getvalue()


@dataclass
class Verdict:
    """What `verify` found in one file (see `report` for its printed form)."""

    source: str
    format: str | None = None
    c2pa: dict[str, Any] = field(default_factory=dict)
    digital_source_type: str | None = None
    aigc: dict[str, Any] | None = None
    visible_label: str | None = None
    lineage: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def claims_provenance(self) -> bool:
        return bool(self.c2pa.get("present") or self.lineage or self.aigc or self.digital_source_type)

    @property
    def ok(self) -> bool:
        return self.claims_provenance and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "format": self.format, "c2pa": self.c2pa,
                "digital_source_type": self.digital_source_type, "aigc": self.aigc,
                "visible_label": self.visible_label, "lineage": self.lineage, "problems": self.problems}


def verify(data: bytes, source: str, trust_anchors: bytes | None = None) -> Verdict:
    """Check everything an image says about itself. A problem is a claim that does not hold: a manifest
    that fails validation (or, with ``trust_anchors``, chains to none of them), lineage that says the file
    was signed while no manifest is there, an AIGC label that is not the standard's JSON."""
    import c2pa

    v = Verdict(source)
    try:
        info = imagemeta.read_provenance(data)
    except Exception as e:  # not an image at all
        v.problems.append(f"not a readable image: {e}")
        return v
    v.format, v.lineage = info.get("format"), info.get("lineage")
    v.digital_source_type = info.get("digital_source_type")
    v.visible_label = (v.lineage or {}).get("label")
    if (raw := info.get("aigc")) is not None:
        try:
            v.aigc = json.loads(raw)
            if not isinstance(v.aigc, dict) or str(v.aigc.get("Label")) not in ("1", "2", "3"):
                raise ValueError("no Label 1, 2 or 3")
        except ValueError as e:
            v.problems.append(f"the TC260:AIGC label is not the GB 45438 JSON object ({e})")
    mime = imagemeta.content_type({"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}.get(v.format or "", "png"))
    ctx = None
    if trust_anchors:
        ctx = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_anchors.decode()},
                                      "verify": {"verify_trust": True}})
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=ctx)
    except c2pa.C2paError as e:
        v.c2pa = {"present": True, "state": "Unreadable"}
        v.problems.append(f"the C2PA manifest cannot be read: {e}")
        return v
    if reader is None:
        v.c2pa = {"present": False}
        if (v.lineage or {}).get("c2pa"):
            v.problems.append("the embedded lineage says the file was signed, but it has no C2PA manifest "
                              "(stripped or re-encoded)")
        return v
    with reader:
        state = reader.get_validation_state()
        results = (reader.get_validation_results() or {}).get("activeManifest", {})
        manifest = reader.get_active_manifest() or {}
    failures = [f"{f.get('code')}: {f.get('explanation', '')}" for f in results.get("failure", [])]
    assertions = {a.get("label"): a.get("data") for a in manifest.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    sig = manifest.get("signature_info", {})
    v.c2pa = {"present": True, "state": state, "trusted": state == "Trusted",
              "signer": {"issuer": sig.get("issuer"), "common_name": sig.get("common_name"), "alg": sig.get("alg")},
              "development_chain": DEV_MARK in str(sig.get("issuer", "")),
              "actions": [{k: a.get(k) for k in ("action", "digitalSourceType")} for a in actions],
              "render": assertions.get(ASSERTION), "failures": failures}
    real_failures = [f for f in failures if not f.startswith(_UNTRUSTED)]
    if state not in ("Valid", "Trusted") or real_failures:
        v.problems.append("the C2PA manifest does not validate: " + "; ".join(real_failures or [str(state)]))
    elif trust_anchors and state != "Trusted":
        v.problems.append("the C2PA manifest is valid but its signer chains to none of the trust anchors")
    return v


def read_source(source: str, settings: Settings, storage: Any | None) -> bytes:
    """A local file's bytes, or an S3 object's: ``s3://bucket/key``, or a key in the renders bucket."""
    if Path(source).is_file():
        return Path(source).read_bytes()
    if storage is None:
        raise UserError(f"no file at {source}, and S3 is not configured to look for it there")
    if source.startswith("s3://"):
        bucket, _, key = source.removeprefix("s3://").partition("/")
    else:
        bucket, key = settings.bucket_renders, source
    return storage.get_bytes(bucket, key)
