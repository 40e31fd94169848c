"""The "Campaigns" page in the Airflow UI: runs newest first with their state (planned, rendering, done,
or failed with its reason), live progress while they render (shards and images done, images/s, time
left; the page polls ``/api/runs``, no reload), thumbnails, filters by campaign and status, links to
the Airflow run, the gallery, manifests, rejected rows, the validation report (GX Data Docs, served from
S3 through this app), the model and its dataset version; a run page with each image's labels and C2PA
state; a models page; the whole run as one streamed zip.

A FastAPI app mounted by the plugin at ``/campaigns``. Read-only. Airflow does not authenticate
plugin apps, so every route depends on Airflow's own ``get_user`` (the UI's session cookie or a
bearer token): anonymous callers get 401. All user text is HTML-escaped; images are shown through
short-lived presigned S3 URLs.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException
from fastapi.concurrency import iterate_in_threadpool
from fastapi.responses import HTMLResponse, Response, StreamingResponse

try:  # the API server has it; the dependency is what puts the app behind Airflow's authentication
    from airflow.api_fastapi.core_api.security import get_user
except ImportError:  # pragma: no cover
    def get_user() -> None:  # type: ignore[misc]
        raise HTTPException(status_code=401, detail="Not authenticated")

# No generated API docs: FastAPI serves /docs, /redoc and /openapi.json outside the app's dependencies,
# so they would answer anonymous callers (and describe the routes to them).
app = FastAPI(title="Campaigns", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None, openapi_url=None)
e = html.escape
_CSS = (":root{color-scheme:light dark;--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bar:#2da44e;--bad:#cf222e}"
        "@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--line:#30363d;--bar:#3fb950;"
        "--bad:#f85149}}"
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:var(--fg)}table{border-collapse:collapse}"
        "td,th{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}"
        ".muted{color:var(--muted);font-size:.85rem}.failed{color:var(--bad)}"
        ".bar{width:9rem;height:.5rem;border:1px solid var(--line);border-radius:3px;overflow:hidden}"
        ".bar>i{display:block;height:100%;background:var(--bar)}"
        ".strip img{height:40px;width:40px;object-fit:cover;border-radius:3px;margin-right:2px}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}figure{margin:0}"
        "img{max-width:100%;border-radius:4px}.grid img{width:100%;aspect-ratio:1;object-fit:contain}"
        "figcaption{font-size:.8rem}form{margin:0 0 1rem}"
        ".badge{display:inline-block;border:1px solid var(--line);border-radius:9px;padding:0 6px;margin-top:2px;"
        "font-size:.75rem;color:var(--muted)}img.samples{width:150px;display:block;margin-top:4px}"
        "tr:target{outline:2px solid var(--bar)}")
STATUSES = ("running", "success", "failed")
STATUS_LABELS = {"": "any status", "running": "planned or rendering", "success": "done", "failed": "failed"}


def _stage(status: str, progress: dict[str, Any] | None) -> str:
    """What a person calls a run's state: planned (no image yet), rendering, done, failed."""
    if status == "running":
        return "rendering" if progress and progress["images_done"] else "planned"
    return {"success": "done"}.get(status, status)


def _stores() -> tuple[Any, Any, Any]:
    """Settings, S3 and lineage of this API-server process: built on the first request, then shared."""
    from gen_airflow import factory_resources

    res = factory_resources()
    return res.settings, res.storage, res.lineage


def _runs(status: str = "", campaign: str = "", thumbs: int = 0) -> list[dict[str, Any]]:
    """Render runs, newest first, with their progress, links (presigned, or through this app) and thumbnails."""
    s, store, lineage = _stores()
    out = []
    for r in lineage.runs(campaign=campaign or None, limit=200):
        if status and r["status"] != status:
            continue
        summary = json.loads(r.pop("summary_json") or "{}")
        prefix = _prefix(r, summary)
        model = lineage.model(r["model_id"]) if r.get("model_id") else None
        progress = lineage.progress(r["run_id"])
        out.append({**r, "throughput_images_per_s": summary.get("throughput_images_per_s"), "prefix": prefix,
                    "error": summary.get("error"), "progress": progress, "stage": _stage(r["status"], progress),
                    "model_version": model["version"] if model else None,
                    "dataset_version_id": model["dataset_version_id"] if model else None,
                    "links": _run_links(r, prefix, summary),
                    "thumbnails": [_presigned(o["object_key"]) for o in lineage.run_outputs(r["run_id"], thumbs)]
                    if thumbs else []})
    return out


def _prefix(run: dict[str, Any], summary: dict[str, Any]) -> str:
    """A run's folder in the renders bucket: its summary's, or (before it has one) the one the plan gives every
    run: the campaign's slug, then the run id."""
    from gen_engine.naming import slugify

    return summary.get("prefix") or f"{slugify(run['campaign'])}/{run['run_id']}/"


def _presigned(key: str, bucket: str = "") -> str:
    s, store, _ = _stores()
    return store.presigned_get(bucket or s.bucket_renders, key, expires=timedelta(hours=1))


def _run_links(r: dict[str, Any], prefix: str, summary: dict[str, Any]) -> dict[str, str]:
    """Where a run's outputs and reports are: S3 objects presigned, Data Docs through this app, the Airflow
    run (the DAG's runs for a run the CLI rendered). Relative to the app's root."""
    dag = r.get("dag_id") or "campaign_render"
    links = {"Airflow run": f"../dags/{quote(dag)}/runs/{quote(r['dag_run_id'], safe='')}" if r.get("dag_run_id")
             else f"../dags/{quote(dag)}/runs"}
    if (summary.get("validation") or {}).get("data_docs"):
        links["validation (Data Docs)"] = f"runs/{quote(r['run_id'])}/data_docs/index.html"
    if r["status"] == "success":
        links |= {name: _presigned(prefix + f) for name, f in (
            ("gallery", "index.html"), ("manifest.csv", "manifest.csv"), ("manifest.parquet", "manifest.parquet"),
            ("rejected.csv", "rejected.csv"), ("validation.json", "validation.json"))}
    return links


@app.get("/api/runs")
async def api_runs(status: str = "", campaign: str = "") -> list[dict[str, Any]]:
    """Every render run, newest first (JSON), with its progress: the page polls this while runs render."""
    return await asyncio.to_thread(_runs, status if status in STATUSES else "", campaign)


def _progress_cell(r: dict[str, Any]) -> str:
    p = r.get("progress")
    if r["status"] == "failed":
        return f"<span class='failed'>failed</span><div class='muted'>{e(r.get('error') or '')}</div>"
    if not p:
        return e(r["stage"])
    pct = 100 * p["images_done"] / max(p["images_total"], 1)
    rate = f" · {p['images_per_s']:.1f} img/s" if p.get("images_per_s") else ""
    eta = f" · {_left(p['eta_s'])}" if r["status"] == "running" and p.get("eta_s") else ""
    return (f"{e(r['stage'])}<div class='bar'><i style='width:{pct:.0f}%'></i></div><div class='muted'>"
            f"shards {p['shards_done']}/{p['shards_total']} · images {p['images_done']}/{p['images_total']}"
            f"{rate}{eta}</div>")


def _rate(r: dict[str, Any]) -> str:
    """Images/s: the finished run's own figure; while it renders, the rate so far."""
    rate = r["throughput_images_per_s"] if r["status"] != "running" else (r.get("progress") or {}).get("images_per_s")
    return f"{rate:.1f}" if rate else "-"


def _left(eta_s: float) -> str:
    return "under 1 s left" if eta_s < 1 else f"{eta_s:.0f} s left" if eta_s < 120 else f"{eta_s / 60:.0f} min left"


# While a run renders, the page asks /api/runs for the running runs only every 3 s and replaces their
# progress cells (no reload); when one has finished it reloads once, for its final counts and links.
# Text goes in as DOM text (textContent, append), never as HTML.
_POLL = """<script>
(function(){
  function left(s){return s<1?'under 1 s left':s<120?s.toFixed(0)+' s left':(s/60).toFixed(0)+' min left'}
  function cell(r){
    const p=r.progress, d=document.createElement('td'); d.className='progress';
    if(!p){d.textContent=r.stage;return d}
    d.append(r.stage);
    const bar=document.createElement('div'); bar.className='bar'; const i=document.createElement('i');
    i.style.width=(100*p.images_done/Math.max(p.images_total,1)).toFixed(0)+'%'; bar.append(i); d.append(bar);
    const m=document.createElement('div'); m.className='muted';
    m.textContent='shards '+p.shards_done+'/'+p.shards_total+' · images '+p.images_done+'/'+p.images_total+
      (p.images_per_s?' · '+p.images_per_s.toFixed(1)+' img/s':'')+
      (r.status==='running'&&p.eta_s?' · '+left(p.eta_s):'');
    d.append(m); return d;
  }
  async function tick(){
    const q=new URLSearchParams(location.search); q.set('status','running');
    const res=await fetch('api/runs?'+q,{credentials:'same-origin'}); if(!res.ok)return;
    const live=new Set();
    for(const r of await res.json()){
      live.add(r.run_id);
      const row=document.querySelector('tr[data-run="'+CSS.escape(r.run_id)+'"]'); if(!row)continue;
      const old=row.querySelector('td.progress'); if(old)old.replaceWith(cell(r));
    }
    const shown=[...document.querySelectorAll('tr[data-status="running"]')].map(tr=>tr.dataset.run);
    if(shown.some(id=>!live.has(id))){location.reload();return}
    if(live.size)setTimeout(tick,3000);
  }
  if(document.querySelector('tr[data-status="running"]'))setTimeout(tick,3000);
})();
</script>"""


def _strip(r: dict[str, Any]) -> str:
    return "".join(f"<img loading='lazy' alt='thumbnail' src='{e(u)}'>" for u in r["thumbnails"])


def _links(links: dict[str, str], root: str = "") -> str:
    """Links as HTML; ``root`` leads from the page to the app's root (the links' base). Airflow's own pages
    open in the whole window: inside Airflow's UI this page is an iframe."""
    def href(u: str) -> str:
        return u if u.startswith(("http://", "https://")) else root + u

    return " · ".join(f"<a href='{e(href(u))}'{TOP if u.startswith('../') else ''}>{e(name)}</a>"
                      for name, u in links.items())


TOP = " target='_top'"


def _model_cell(r: dict[str, Any]) -> str:
    if not r.get("model_id"):
        return "-"
    data = (f"<a href='datasets/{e(quote(r['dataset_version_id']))}/data_docs/index.html'>"
            f"data {e(r['dataset_version_id'][:12])}</a>" if r.get("dataset_version_id") else "no dataset on record")
    return (f"<a href='models#{e(quote(r['model_id']))}'>{e(r['model_id'])}</a><div class='muted'>"
            f"v{e(str(r['model_version']))} · {data}</div>")


@app.get("/", response_class=HTMLResponse)
async def index(status: str = "", campaign: str = "") -> str:
    status = status if status in STATUSES else ""
    runs = await asyncio.to_thread(_runs, status, campaign, 6)
    options = "".join(f"<option value='{v}'{' selected' if v == status else ''}>{STATUS_LABELS[v]}</option>"
                      for v in ("", *STATUSES))
    rows = "".join(
        f"<tr data-run='{e(r['run_id'])}' data-status='{e(r['status'])}'><td>{e(r['campaign'])}</td>"
        f"<td><a href='runs/{e(r['run_id'])}'>{e(r['run_id'])}</a><div class='muted'>{e(r['started_at'])}</div></td>"
        f"<td class='progress'>{_progress_cell(r)}</td>"
        f"<td>{r['rows_read']} read<div class='muted'>{r['rows_accepted']} accepted · {r['rows_rejected']} rejected"
        f"</div></td><td>{r['images']}</td><td>{_rate(r)}</td>"
        f"<td>{_model_cell(r)}</td>"
        f"<td class='strip'>{_strip(r)}</td><td>{_links(r['links'])}</td></tr>" for r in runs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Campaigns</title><style>{_CSS}</style></head>"
            "<body><h1>Campaigns</h1><p><a href='models'>models</a></p>"
            "<form method='get'><input name='campaign' placeholder='campaign' "
            f"value='{e(campaign)}'> <select name='status'>{options}</select> <button>filter</button></form>"
            "<table><tr><th>campaign</th><th>run</th><th>status</th><th>rows</th><th>images</th><th>images/s</th>"
            f"<th>model</th><th>thumbnails</th><th>outputs</th></tr>{rows}</table>{_POLL}</body></html>")


def _gallery(run_id: str, limit: int) -> str:
    _, _, lineage = _stores()
    run = lineage.run(run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"no render run {run_id}")
    outs = lineage.run_outputs(run_id, limit)
    summary = json.loads(run.get("summary_json") or "{}")
    figs = "".join(
        f"<figure><img loading='lazy' src='{e(_presigned(o['object_key']))}' alt='{e(o['prompt'])}'>"
        f"<figcaption>row {o['row_number']} · seed {o['seed']}<br>{e(o['prompt'])}<br>{_provenance(o)}</figcaption>"
        "</figure>" for o in outs)
    rej = lineage.rejected(run_id)
    rej_rows = "".join(f"<tr><td>{r['row_number']}</td><td>{e(r['reason'])}</td></tr>" for r in rej[:200])
    labelled = summary.get("labels") or {}
    labels = (f" · {labelled.get('visible_label', 0)} with a visible AI label, {labelled.get('c2pa_signed', 0)} "
              "C2PA-signed" if labelled else "")
    links = _links(_run_links(run, _prefix(run, summary), summary), root="../")
    download = (f" · <a href='{e(run_id)}/download.zip'>download the whole run (zip)</a>"
                if run["status"] == "success" else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(run['campaign'])}</title><style>{_CSS}</style>"
            f"</head><body><p><a href='../'>all campaigns</a></p><h1>{e(run['campaign'])}</h1>"
            f"<p>run {e(run_id)} · {e(run['status'])} · {run['rows_read']} rows read = "
            f"{run['rows_accepted']} accepted + {run['rows_rejected']} rejected + {run['rows_blank']} blank · "
            f"{run['images']} images{labels} · model "
            f"{e(str(run['model_id']))} · CSV {e(run['csv_key'])}{download}</p><p>{links}</p>"
            f"<div class='grid'>{figs}</div>"
            f"<h2>Rejected rows ({len(rej)})</h2><table><tr><th>row</th><th>reason</th></tr>{rej_rows}</table>"
            "</body></html>")


def _provenance(o: dict[str, Any]) -> str:
    """An image's labelling as its manifest says: the visible label's placement and the C2PA state."""
    if o.get("label") is None and o.get("c2pa") is None:
        return "<span class='muted'>labels not recorded</span>"
    label = "no visible label" if o.get("label") in (None, "none") else f"AI label: {e(o['label'])}"
    c2pa = "C2PA signed" if o.get("c2pa") == "signed" else "not signed"
    return f"<span class='badge'>{label}</span> <span class='badge'>{c2pa}</span>"


@app.get("/runs/{run_id}", response_class=HTMLResponse)
async def gallery(run_id: str, limit: int = 200) -> str:
    return await asyncio.to_thread(_gallery, run_id, min(max(limit, 1), 1000))


def _docs_object(prefix_of: Any, ident: str, path: str) -> tuple[bytes, str]:
    """One file of a Data Docs site kept in S3 under ``prefix_of(ident)`` (bucket, prefix): its bytes and
    type. The path stays inside the site (no empty, '.' or '..' parts)."""
    import mimetypes

    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise HTTPException(status_code=404, detail="no such report file")
    where = prefix_of(ident)
    if where is None:
        raise HTTPException(status_code=404, detail=f"no validation report for {ident}")
    bucket, prefix = where
    from gen_engine.infra.storage import ObjectNotFound

    try:
        body = _stores()[1].get_bytes(bucket, prefix + "data_docs/" + path)
    except ObjectNotFound:
        raise HTTPException(status_code=404, detail=f"no report file {path}") from None
    return body, mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"


def _run_prefix(run_id: str) -> tuple[str, str] | None:
    s, _, lineage = _stores()
    run = lineage.run(run_id)
    if run is None:
        return None
    summary = json.loads(run.get("summary_json") or "{}")
    return s.bucket_renders, _prefix(run, summary)


def _dataset_prefix(version_id: str) -> tuple[str, str] | None:
    row = _stores()[2].dataset_version_by_id(version_id)
    if row is None:
        return None
    bucket, _, prefix = row["uri"].removeprefix("s3://").partition("/")
    return bucket, prefix


@app.get("/runs/{run_id}/data_docs/{path:path}")
async def run_data_docs(run_id: str, path: str) -> Response:
    """The GX Data Docs of a run's prompt-CSV validation, from S3 (its pages link each other relatively)."""
    body, kind = await asyncio.to_thread(_docs_object, _run_prefix, run_id, path)
    return Response(body, media_type=kind)


@app.get("/datasets/{version_id}/data_docs/{path:path}")
async def dataset_data_docs(version_id: str, path: str) -> Response:
    """The GX Data Docs of a dataset version's ingest validation, from S3."""
    body, kind = await asyncio.to_thread(_docs_object, _dataset_prefix, version_id, path)
    return Response(body, media_type=kind)


METRIC_KEYS = (("r_precision", "R-precision"), ("fd", "FD"), ("color_judge", "colour judge"),
               ("color_acc", "colour (shapes)"), ("shape_acc", "shape (shapes)"))


def _models() -> list[dict[str, Any]]:
    """Model versions newest first: figures, gate and promotion decisions, aliases, compiled engines, and
    the text encoder each reads prompts with."""
    from gen_engine.text import model_encoder_name

    _, _, lineage = _stores()
    aliases = lineage.aliases()
    out = []
    for m in lineage.models():
        metrics = json.loads(m.get("metrics_json") or "{}")
        engines = [{"backend": en["backend"], "parity": json.loads(en.get("report_json") or "{}").get(
                    "parity", json.loads(en.get("report_json") or "{}").get("onnx", {}).get("parity"))}
                   for en in lineage.engines(m["model_id"])]
        samples = _samples_url(m)
        text = model_encoder_name(json.loads(m.get("config_json") or "{}"))
        out.append({"model_id": m["model_id"], "version": m["version"], "created_at": m["created_at"],
                    "samples": samples, "text_encoder": text,
                    "dataset_version_id": m["dataset_version_id"], "parent_model_id": m.get("parent_model_id"),
                    "aliases": sorted(a for a, mid in aliases.items() if mid == m["model_id"]),
                    "metrics": {k: metrics[k] for k, _ in METRIC_KEYS if k in metrics},
                    "gate": metrics.get("gate"), "promotion": metrics.get("promotion"), "engines": engines})
    return out


def _samples_url(m: dict[str, Any]) -> str | None:
    """Presigned URL of a model's sample grid (``samples.png`` beside its weights), None if it has none."""
    if not str(m.get("uri", "")).startswith("s3://"):
        return None
    bucket, _, prefix = m["uri"].removeprefix("s3://").partition("/")
    if not _stores()[1].exists(bucket, prefix + "samples.png"):
        return None
    return _presigned(prefix + "samples.png", bucket)


@app.get("/api/models")
async def api_models() -> list[dict[str, Any]]:
    return await asyncio.to_thread(_models)


def _decision(d: dict[str, Any] | None) -> str:
    if not d:
        return "<span class='muted'>none recorded</span>"
    ok = d.get("promote", d.get("promoted"))
    return (f"<span class='{'' if ok else 'failed'}'>{'yes' if ok else 'no'}</span>"
            f"<div class='muted'>{e(str(d.get('reason', '')))}</div>")


@app.get("/models", response_class=HTMLResponse)
async def models_page() -> str:
    models = await asyncio.to_thread(_models)
    head = "".join(f"<th>{label}</th>" for _, label in METRIC_KEYS)
    rows = "".join(
        f"<tr id='{e(m['model_id'])}'><td>v{m['version']} {e(m['model_id'])}<div class='muted'>"
        f"{e(m['created_at'])}<br>prompts: {e(m['text_encoder'])}</div>{_samples_img(m)}</td>"
        f"<td>{e(', '.join(m['aliases']) or '-')}</td><td>{e(str(m['dataset_version_id'] or '-'))}<div class='muted'>"
        f"from {e(str(m['parent_model_id'] or '-'))}</div></td>"
        + "".join(f"<td>{_figure(m['metrics'].get(k))}</td>" for k, _ in METRIC_KEYS)
        + f"<td>{_decision(m['gate'])}</td><td>{_decision(m['promotion'])}</td><td>"
        + "<br>".join(_engine(en) for en in m["engines"])
        + "</td></tr>" for m in models)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Models</title><style>{_CSS}</style></head>"
            "<body><p><a href='./'>campaigns</a></p><h1>Models</h1><table><tr><th>version</th><th>aliases</th>"
            f"<th>dataset</th>{head}<th>gate: promote?</th><th>promoted?</th><th>engines (parity)</th></tr>{rows}"
            "</table></body></html>")


def _samples_img(m: dict[str, Any]) -> str:
    if not m.get("samples"):
        return "<div class='muted'>no sample grid</div>"
    return (f"<a href='{e(m['samples'])}'><img class='samples' loading='lazy' alt='sample grid of "
            f"{e(m['model_id'])}' src='{e(m['samples'])}'></a>")


def _engine(en: dict[str, Any]) -> str:
    parity = en.get("parity") or {}
    err = f" <span class='muted'>parity {parity['max_abs_error']:.1e}</span>" if "max_abs_error" in parity else ""
    return e(en["backend"]) + err


def _figure(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "-"


class _Chunks(io.RawIOBase):
    """A write-only, non-seekable sink whose bytes are taken out as they come (zipfile then writes data
    descriptors instead of seeking back)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _zip_run(run_id: str) -> Iterator[bytes]:
    """Every object of a finished run (images, manifests, gallery, reports) as a zip, streamed: one object
    in memory at a time, whatever the run's size. Names stay under the run's own folder."""
    s, store, lineage = _stores()
    run = lineage.run(run_id)
    assert run is not None  # checked by the route (`_check_finished`) before the response starts
    prefix = _prefix(run, json.loads(run.get("summary_json") or "{}"))
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as z:
        for o in store.list(s.bucket_renders, prefix):
            name = o.key.removeprefix(prefix)
            if not name or name.startswith("work/") or ".." in name.split("/"):
                continue
            with z.open(f"{run_id}/{name}", "w") as f:
                f.write(store.get_bytes(s.bucket_renders, o.key))
            yield sink.take()
    yield sink.take()


@app.get("/runs/{run_id}/download.zip")
async def download(run_id: str) -> StreamingResponse:
    await asyncio.to_thread(_check_finished, run_id)
    return StreamingResponse(iterate_in_threadpool(_zip_run(run_id)), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{run_id}.zip"'})


def _check_finished(run_id: str) -> None:
    run = _stores()[2].run(run_id)
    if run is None or run["status"] != "success":
        raise HTTPException(status_code=404, detail=f"no finished render run {run_id}")
