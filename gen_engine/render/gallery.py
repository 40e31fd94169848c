"""What people look at: the run's index.html gallery (the contact sheet PNG is `gen_engine.sheets`').

Every piece of user text (prompts, asset names, rejected fields, campaign names) is HTML-escaped;
image links are relative, so the gallery works from the S3 prefix and from a downloaded copy.
"""

from __future__ import annotations

import html
from typing import Any

GALLERY_LIMIT = 500
REJECTED_LIMIT = 500  # rejected rows shown (all are in rejected.csv)


def _validation_line(summary: dict[str, Any]) -> str:
    v = summary.get("validation") or {}
    if not v:
        return "not run"
    if "evaluated_expectations" not in v:
        return "passed" if v.get("success") else "failed"
    ok = v.get("successful_expectations", 0)
    return f"{'passed' if v['success'] else 'FAILED'}: {ok}/{v['evaluated_expectations']} expectations"


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}h1{margin-bottom:.2rem}
.meta{color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
figure{margin:0;background:#fafafa;border:1px solid #ddd;border-radius:6px;padding:6px}
img{width:100%;image-rendering:auto;border-radius:4px}figcaption{font-size:.8rem;word-wrap:break-word}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}"""


def _labels_line(labels: dict | None, n: int) -> str:
    if not labels:
        return "signing and visible labels are not recorded for this run"
    return f"{labels['c2pa_signed']} of {n} carry a signed C2PA manifest, {labels['visible_label']} a visible label"


def index_html(summary: dict[str, Any], outputs: list[dict[str, Any]], rejected: list[dict[str, Any]],
               n_rejected: int | None = None) -> bytes:
    """The gallery page: ``outputs`` and ``rejected`` are the first ones (the page shows at most
    `GALLERY_LIMIT` images and `REJECTED_LIMIT` rejected rows); the totals come from ``summary`` and
    ``n_rejected`` (default ``len(rejected)``)."""
    n_rejected = len(rejected) if n_rejected is None else n_rejected
    e = html.escape
    prefix_len = len(summary["prefix"])
    figs = []
    for o in outputs[:GALLERY_LIMIT]:
        rel = o["object_key"][prefix_len:]
        figs.append(
            f'<figure><a href="{e(rel)}"><img loading="lazy" src="{e(rel)}" alt="{e(o["prompt"])}"></a>'
            f"<figcaption><b>{e(o['asset'])}_{o['k']}</b> · seed {o['seed']} · row {o['row_number']}<br>"
            f"{e(o['prompt'])}</figcaption></figure>")
    n_images = summary["counts"]["images"]
    more = (f"<p>Showing {min(GALLERY_LIMIT, len(outputs))} of {n_images} images; every image is listed in "
            '<a href="manifest.csv">manifest.csv</a>.</p>') if n_images > min(GALLERY_LIMIT, len(outputs)) else ""
    rej_rows = "".join(f"<tr><td>{r['row_number']}</td><td>{e(r['reason'])}</td>"
                       f"<td>{e(str(r['fields'].get('prompt', ''))[:120])}</td></tr>"
                       for r in rejected[:REJECTED_LIMIT])
    rej = (f"<h2>Rejected rows ({n_rejected})</h2><p>All of them, with their original fields, are in "
           f'<a href="rejected.csv">rejected.csv</a>.</p><table><tr><th>row</th><th>reason</th><th>prompt</th></tr>'
           f"{rej_rows}</table>") if n_rejected else ""
    c = summary["counts"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{e(summary['campaign'])} · {e(summary['run_id'])}</title><style>{_CSS}</style></head><body>
<h1>{e(summary['campaign'])}</h1>
<p class="meta">run {e(summary['run_id'])} · CSV {e(summary['csv_key'])} · model {e(str(summary['model_id']))}
 · engine {e(summary['backend'])}</p>
<p>{c['rows_read']} rows read = {c['rows_accepted']} accepted + {c['rows_rejected']} rejected + {c['rows_blank']} blank
 · {c['images']} images · {summary['throughput_images_per_s']:.1f} images/s ·
<a href="manifest.csv">manifest.csv</a> · <a href="manifest.parquet">manifest.parquet</a> ·
<a href="contact_sheet.png">contact sheet</a> · <a href="summary.json">summary.json</a> ·
<a href="validation.json">validation report</a> ({e(_validation_line(summary))})</p>
<div class="grid">{''.join(figs)}</div>{more}{rej}
<p class="meta">Images are AI-generated: each carries IPTC DigitalSourceType trainedAlgorithmicMedia and the
GB 45438 AIGC label in its XMP; {_labels_line(summary.get("labels"), c["images"])}. The manifest's label and c2pa
columns say which. Check a file with <code>genengine verify</code>.</p>
</body></html>""".encode()
