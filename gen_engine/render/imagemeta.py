"""Encoding rendered images with their provenance inside the file.

Every image says what made it, readable without our database:
- PNG: a ``parameters`` text chunk (the convention other image tools read: prompt on the first line,
  then ``Seed: ..., Size: ..., Model: ...``), an XMP packet with IPTC DigitalSourceType
  ``trainedAlgorithmicMedia`` and the GB 45438 implicit label (``TC260:AIGC``, see `render.labels`),
  and a ``gen_lineage`` JSON chunk for ``genengine lineage FILE``.
- WebP and JPEG: the same XMP packet, which carries the parameters and the lineage JSON too.
The signed C2PA manifest is added after encoding (`render.provenance.sign`), over these bytes.
"""

from __future__ import annotations

import io
import json
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
AIGC_NAMESPACE = "http://www.tc260.org.cn/ns/AIGC/1.0/"  # TC260-PG-20258A; see render.labels
XMP_KEY = "XML:com.adobe.xmp"
_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
_EXT = {"png": "png", "webp": "webp", "jpeg": "jpg"}


def extension(fmt: str) -> str:
    return _EXT[fmt]


def content_type(fmt: str) -> str:
    return _CONTENT_TYPES[fmt]


def parameters_text(prompt: str, p: dict[str, Any]) -> str:
    """A1111-style parameters: the prompt, then one line of ``Key: value`` pairs."""
    pairs = ", ".join(f"{k}: {v}" for k, v in p.items())
    return f"{prompt}\n{pairs}"


def xmp_packet(prompt: str, parameters: str, lineage: dict[str, Any], aigc: str | None = None) -> bytes:
    """The XMP packet; ``aigc``: the GB 45438 label's JSON text (`render.labels.aigc_json`)."""
    attr = lambda s: escape(s, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;"})  # noqa: E731
    tc260 = f"<TC260:AIGC>{escape(aigc)}</TC260:AIGC>" if aigc else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:gen="https://gen-engine.dev/ns/1.0/" '
        f'xmlns:TC260="{AIGC_NAMESPACE}" '
        f'gen:parameters="{attr(parameters)}" gen:lineage="{attr(json.dumps(lineage, sort_keys=True))}">'
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>{tc260}"
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(prompt)}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
    ).encode()


def encode(img: Image.Image, fmt: str, prompt: str, params: dict[str, Any], lineage: dict[str, Any],
           aigc: str | None = None, png_level: int = 2) -> bytes:
    """The encoded file bytes with all provenance embedded (but the C2PA manifest); ``png_level``: zlib
    level of a PNG (Settings.render_png_level)."""
    text = parameters_text(prompt, params)
    xmp = xmp_packet(prompt, text, lineage, aigc)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        info.add_itxt(XMP_KEY, xmp.decode("utf-8"))
        info.add_itxt("gen_lineage", json.dumps(lineage, sort_keys=True))
        img.save(buf, "PNG", pnginfo=info, compress_level=png_level)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=92, method=4, xmp=xmp)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=92, xmp=xmp)
    else:
        raise ValueError(f"unsupported format {fmt}")
    return buf.getvalue()


def read_provenance(data: bytes) -> dict[str, Any]:
    """What a file says about itself: parameters, lineage JSON, digital source type."""
    img = Image.open(io.BytesIO(data))
    info: dict[str, Any] = {"format": img.format}
    if img.format == "PNG":
        info["parameters"] = img.info.get("parameters")
        if "gen_lineage" in img.info:
            info["lineage"] = json.loads(img.info["gen_lineage"])
        xmp = img.info.get(XMP_KEY, "")
    else:
        raw = img.info.get("xmp", b"")
        xmp = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if xmp:
        import html
        import re

        if m := re.search(r'gen:lineage="([^"]*)"', xmp):
            info.setdefault("lineage", json.loads(html.unescape(m.group(1))))
        if m := re.search(r'gen:parameters="([^"]*)"', xmp):
            info.setdefault("parameters", html.unescape(m.group(1)))
        if m := re.search(r"<TC260:AIGC>(.*?)</TC260:AIGC>", xmp, re.S):
            info["aigc"] = html.unescape(m.group(1))
        info["digital_source_type"] = DIGITAL_SOURCE_TYPE if DIGITAL_SOURCE_TYPE in xmp else None
    return info
