"""The "Campaigns" page in the Airflow UI: campaigns, runs, counts, status, throughput, model, galleries.

A FastAPI app mounted by the plugin at ``/campaigns``. Read-only. Airflow does not authenticate
plugin apps, so every route depends on Airflow's own ``get_user`` (the UI's session cookie or a
bearer token): anonymous callers get 401. All user text is HTML-escaped; images are shown through
short-lived presigned S3 URLs.
"""

from __future__ import annotations

import asyncio
import html
import json
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

try:  # the API server has it; the dependency is what puts the app behind Airflow's authentication
    from airflow.api_fastapi.core_api.security import get_user
except ImportError:  # pragma: no cover
    def get_user() -> None:  # type: ignore[misc]
        raise HTTPException(status_code=401, detail="Not authenticated")

# No generated API docs: FastAPI serves /docs, /redoc and /openapi.json outside the app's dependencies,
# so they would answer anonymous callers (and describe the routes to them).
app = FastAPI(title="Campaigns", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None, openapi_url=None)
e = html.escape
_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}.grid{display:grid;"
        "grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}figure{margin:0}"
        "img{width:100%;border-radius:4px}figcaption{font-size:.8rem}")


def _stores() -> tuple[Any, Any, Any]:
    """Settings, S3 and lineage of this API-server process: built on the first request, then shared."""
    from gen_airflow import factory_resources

    res = factory_resources()
    return res.settings, res.storage, res.lineage


def _runs() -> list[dict[str, Any]]:
    _, _, lineage = _stores()
    out = []
    for r in lineage.runs(limit=200):
        summary = json.loads(r.pop("summary_json") or "{}")
        out.append({**r, "throughput_images_per_s": summary.get("throughput_images_per_s"),
                    "prefix": summary.get("prefix")})
    return out


@app.get("/api/runs")
async def api_runs() -> list[dict[str, Any]]:
    """Every render run, newest first (JSON)."""
    return await asyncio.to_thread(_runs)


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    runs = await asyncio.to_thread(_runs)
    rows = "".join(
        f"<tr><td>{e(r['campaign'])}</td><td><a href='runs/{e(r['run_id'])}'>{e(r['run_id'])}</a></td>"
        f"<td>{e(r['status'])}</td><td>{r['rows_read']}</td><td>{r['rows_accepted']}</td><td>{r['rows_rejected']}</td>"
        f"<td>{r['images']}</td><td>{(r['throughput_images_per_s'] or 0):.1f}</td><td>{e(str(r['model_id']))}</td>"
        f"<td>{e(r['started_at'])}</td></tr>" for r in runs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Campaigns</title><style>{_CSS}</style></head>"
            "<body><h1>Campaigns</h1><table><tr><th>campaign</th><th>run</th><th>status</th><th>rows read</th>"
            "<th>accepted</th><th>rejected</th><th>images</th><th>images/s</th><th>model</th><th>started</th></tr>"
            f"{rows}</table></body></html>")


def _gallery(run_id: str, limit: int) -> str:
    s, store, lineage = _stores()
    run = lineage.run(run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"no render run {run_id}")
    outs = lineage.run_outputs(run_id, limit)
    url = lambda key: store.presigned_get(s.bucket_renders, key, expires=timedelta(hours=1))  # noqa: E731
    figs = "".join(
        f"<figure><img loading='lazy' src='{e(url(o['object_key']))}' alt='{e(o['prompt'])}'>"
        f"<figcaption>row {o['row_number']} · seed {o['seed']}<br>{e(o['prompt'])}</figcaption></figure>"
        for o in outs)
    rej = lineage.rejected(run_id)
    rej_rows = "".join(f"<tr><td>{r['row_number']}</td><td>{e(r['reason'])}</td></tr>" for r in rej[:200])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(run['campaign'])}</title><style>{_CSS}</style>"
            f"</head><body><p><a href='../'>all campaigns</a></p><h1>{e(run['campaign'])}</h1>"
            f"<p>run {e(run_id)} · {e(run['status'])} · {run['rows_read']} rows read = "
            f"{run['rows_accepted']} accepted + {run['rows_rejected']} rejected + {run['rows_blank']} blank · "
            f"{run['images']} images · model "
            f"{e(str(run['model_id']))} · CSV {e(run['csv_key'])}</p><div class='grid'>{figs}</div>"
            f"<h2>Rejected rows ({len(rej)})</h2><table><tr><th>row</th><th>reason</th></tr>{rej_rows}</table>"
            "</body></html>")


@app.get("/runs/{run_id}", response_class=HTMLResponse)
async def gallery(run_id: str, limit: int = 200) -> str:
    return await asyncio.to_thread(_gallery, run_id, min(max(limit, 1), 1000))
