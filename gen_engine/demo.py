"""`make demo`: the whole factory on the embedded defaults (local S3, SQLite), run by Airflow's own scheduler.

1. `airflow standalone` is started in the background (UI on http://127.0.0.1:8080; stopped by
   `make services-down`) and the factory's DAGs are unpaused through the REST API; an empty registry
   gets the shipped starter model as production (`bootstrap`, compiled), so real images from the start;
2. a slice of the starter artwork (the Symbols and Food & Drink emoji of both sets, built offline)
   lands in s3://datasets/raw/starter/ and a **dataset_ingest** run is triggered through the REST API;
   it curates the drop and updates the curated dataset's Asset;
3. that Asset event wakes **generator_retrain**, which warm-starts from production, fine-tunes on the
   new version (configs/demo.yaml, a couple of minutes on a CPU), evaluates challenger and champion,
   gates, and compiles and promotes the challenger if it is not worse;
4. examples/campaigns/spring_sale.csv (sticker prompts in English, Chinese, Spanish and Japanese, and
   some bad rows) lands in s3://campaigns/incoming/; **campaign_watch** claims it (triggered at once
   rather than waiting for its minute) and triggers **campaign_render**, which renders it;
5. the gallery is copied to ./out/<campaign>/ and the locations and the UI login are printed.

The demo itself only drops files, triggers and watches: every task runs under the scheduler, as in a
deployment, and every run is in the UI. A second `make demo` reuses the curated version, skips
retraining (the challenger for this data and config exists), and reuses the rendered images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gen_engine.config import Settings
from gen_engine.errors import GenEngineError
from gen_engine.infra.services import ServiceError, airflow_home, port_free

if TYPE_CHECKING:
    from gen_engine.infra.lineage import LineageStore
    from gen_engine.infra.storage import Storage

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN_CSV = REPO / "examples" / "campaigns" / "spring_sale.csv"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_DATASET = "starter"
DEMO_CATEGORIES = ("Symbols", "Food & Drink")  # hearts, circles, squares in many colours; cakes, fruit, ...


def _airflow_env(s: Settings) -> dict[str, str]:
    # `airflow standalone` starts its components as `airflow` from PATH: put this environment's bin first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PATH": path, "AIRFLOW_HOME": str(airflow_home(s)), "GEN_RETRAIN_CONFIG": str(DEMO_CONFIG),
                         "GEN_RETRAIN_DATASET": DEMO_DATASET, "GEN_INGEST_SCHEDULE": "@daily",
                         "GEN_EVAL_ENCODER_STEPS": "300",
                         "PYTHONPATH": str(REPO / "plugins")}


def start_standalone(s: Settings, console: Console) -> tuple[str, str]:
    """Start `airflow standalone` once (pid file); returns the UI URL and the admin password."""
    home = airflow_home(s)
    pid_file = home / "standalone.pid"
    running = False
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
            running = True
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
    if not running:
        if not port_free(8080):
            raise ServiceError("port 8080 (Airflow UI) is taken; stop what holds it and run `make demo` again")
        log = open(home / "standalone.log", "ab")  # noqa: SIM115 (handed to the child)
        exe = str(Path(sys.executable).with_name("airflow"))
        proc = subprocess.Popen([exe, "standalone"], env=_airflow_env(s), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        console.print(f"airflow standalone starting (pid {proc.pid}, log {home / 'standalone.log'})")
    password_file = home / "simple_auth_manager_passwords.json.generated"
    for _ in range(120):
        if password_file.exists():
            break
        time.sleep(1)
    password = json.loads(password_file.read_text()).get("admin", "?") if password_file.exists() else "(see log)"
    return "http://127.0.0.1:8080", password


def stop_standalone(s: Settings) -> bool:
    pid_file = airflow_home(s) / "standalone.pid"
    try:
        pid = int(pid_file.read_text())
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    pid_file.unlink(missing_ok=True)
    return True


def _drop_zip(work: Path) -> Path:
    """The demo's dataset drop: a slice of the starter artwork as an imagefolder zip (made once)."""
    from gen_engine.datasets.starter import build

    z = work / "starter-drop.zip"
    if z.exists():
        return z
    folder = work / "starter-slice"
    if not (folder / "card.json").exists():
        build(folder, categories=DEMO_CATEGORIES, progress=False)
    tmp = z.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    tmp.rename(z)
    return z


class AirflowAPI:
    """The few calls of Airflow's REST API (v2) the demo needs, with a token from the simple auth manager.

    The same calls serve the "instant" campaign alternative documented in dags/campaign_watch.py.
    """

    def __init__(self, url: str, user: str, password: str) -> None:
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise

        self.url, self.http = url, httpx.Client(base_url=url, timeout=30)
        res = self.http.post("/auth/token", json={"username": user, "password": password})
        res.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {res.json()['access_token']}"

    def call(self, method: str, path: str, retries: int = 4, **kw: object) -> dict:
        """One API call. A 5xx is retried (after 1, 2, 4, 8 s): the embedded Airflow keeps its metadata in
        SQLite, and a request that finds the file locked past SQLite's 5 s by the DAG processor's writes
        fails with a rolled-back "Database error" that the same request, a moment later, does not."""
        for attempt in range(retries + 1):
            res = self.http.request(method, "/api/v2" + path, **kw)
            if res.status_code < 500 or attempt == retries:
                break
            time.sleep(2**attempt)
        if res.status_code >= 400:
            raise ServiceError(f"Airflow API {method} {path}: {res.status_code} {res.text[:300]}")
        return res.json()

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 20})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        out: dict[str, str] = {}
        for ti in tis["task_instances"]:
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            out[name] = ti["state"] or "none"
        return out

    def wait(self, dag_id: str, run_id: str, console: Console, timeout: float = 900) -> str:
        """Poll a run to its end, printing each task's state changes; returns the run's final state."""
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            for task, st in self.task_states(dag_id, run_id).items():
                if seen.get(task) != st:
                    seen[task] = st
                    console.print(f"  {dag_id} / {task}: {st}", highlight=False)
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise ServiceError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s; see the Airflow UI")


DEMO_DAGS = ("dataset_ingest", "generator_retrain", "campaign_watch", "campaign_render")


def _connect(ui: str, password: str, console: Console) -> AirflowAPI:
    """Wait until the API server answers and has parsed our DAGs; unpause them."""
    import httpx

    deadline = time.monotonic() + 240
    api: AirflowAPI | None = None
    while time.monotonic() < deadline:
        try:
            api = api or AirflowAPI(ui, "admin", password)
            listed = {d["dag_id"] for d in api.call("GET", "/dags", params={"limit": 100})["dags"]}
            if set(DEMO_DAGS) <= listed:
                for dag_id in DEMO_DAGS:
                    api.unpause(dag_id)
                return api
        except (httpx.HTTPError, ServiceError):
            pass
        time.sleep(2)
    raise ServiceError("Airflow did not come up with the factory's DAGs within 4 minutes; see "
                       f"{ui} and the log in the Airflow home (standalone.log)")


class DemoFailed(GenEngineError):
    """A stage of the demo did not finish; the message points at its Airflow run or log."""


def run_demo(console: Console) -> dict:
    """Everything through Airflow's scheduler: the demo only drops files, triggers and watches."""
    from gen_engine.resources import resources

    t0 = time.monotonic()
    res = resources()
    s, store, lineage = res.settings, res.storage, res.lineage
    work = s.local_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)

    console.rule("1/5 Airflow")
    ui, password = start_standalone(s, console)
    api = _connect(ui, password, console)
    console.print(f"Airflow is up at {ui}; the factory's DAGs are unpaused")

    from gen_engine.bootstrap import bootstrap

    boot = bootstrap(res)
    console.print(f"registry: {boot['reason']}")

    console.rule("2/5 dataset_ingest")
    store.put_file(s.bucket_datasets, f"raw/{DEMO_DATASET}/demo-drop.zip", _drop_zip(work),
                   content_type="application/zip")
    ingest_started = time.time()
    run_id = api.trigger("dataset_ingest")
    if api.wait("dataset_ingest", run_id, console) != "success":
        raise DemoFailed(f"dataset_ingest failed; see {ui}/dags/dataset_ingest/runs/{run_id}")
    v = lineage.dataset_version(DEMO_DATASET)
    if v is None:
        raise DemoFailed("dataset_ingest did not produce a curated version; see the Airflow log of the run")
    console.print(f"curated: {DEMO_DATASET} v{v['version']} ({v['n_records']} records) at {v['uri']}")

    console.rule("3/5 generator_retrain (woken by the curated dataset's Asset; warm start, a few minutes on a CPU)")
    _wait_retrain(api, lineage, console, ingest_started)
    prod = lineage.resolve_alias("generator", "production")
    if prod is None:
        raise DemoFailed(f"generator_retrain did not promote a model; see {ui}/dags/generator_retrain")
    metrics = json.loads(prod["metrics_json"] or "{}")
    console.print(f"production model: {prod['model_id']} (version {prod['version']}); "
                  + (f"R-precision {metrics['r_precision']:.2f}, FD {metrics['fd']:.3f}" if metrics else ""))

    console.rule("4/5 campaign_watch (every minute) -> campaign_render")
    name = CAMPAIGN_CSV.stem
    store.put_file(s.bucket_campaigns, f"incoming/{name}.csv", CAMPAIGN_CSV, content_type="text/csv")
    api.trigger("campaign_watch")  # at once: its schedule would pick the file up within a minute anyway
    console.print(f"dropped {CAMPAIGN_CSV.name} in s3://{s.bucket_campaigns}/incoming/; campaign_watch triggered")
    done = _wait_render(api, store, s, name, console)
    report_key = done.removesuffix(".csv") + ".report.json"
    report = json.loads(store.get_bytes(s.bucket_campaigns, report_key))
    summary = json.loads(store.get_bytes(s.bucket_renders, report["summary"].split("/", 3)[3]))

    console.rule("5/5 results")
    out = REPO / "out" / summary["campaign"]
    prefix = summary["prefix"]
    for obj in store.list(s.bucket_renders, prefix):
        rel = obj.key[len(prefix):]
        if not rel.startswith("work/"):
            store.get_file(s.bucket_renders, obj.key, out / rel)
    c = summary["counts"]
    console.print(f"{c['rows_read']} rows read = {c['rows_accepted']} accepted + {c['rows_rejected']} rejected "
                  f"+ {c['rows_blank']} blank -> {c['images']} images")
    console.print(f"S3:       {s.s3_url}/{s.bucket_renders}/{prefix}  (index.html, manifest.csv, rejected.csv, "
                  "contact_sheet.png, summary.json)")
    console.print(f"CSV:      s3://{s.bucket_campaigns}/{done}")
    console.print(f"gallery:  {out / 'index.html'}")
    console.print(f"Airflow:  {ui}  (user admin, password {password}); the Campaigns page is in the nav")
    console.print(f"lineage:  genengine lineage {s.bucket_renders}/{prefix}images/hero-red-heart_0.png")
    console.print(f"labels:   genengine verify {s.bucket_renders}/{prefix}images/hero-red-heart_0.png  (C2PA, AIGC, "
                  "visible label; signed with the development chain)")
    console.print(f"done in {time.monotonic() - t0:.0f}s")
    return summary


def _wait_retrain(api: AirflowAPI, lineage: LineageStore, console: Console, since: float) -> None:
    """Wait for the retrain runs woken by the ingest's Asset event; trigger one if none came."""
    from datetime import datetime

    waited: set[str] = set()
    deadline = time.monotonic() + 60
    while True:
        fresh = [r for r in api.runs("generator_retrain")
                 if r["dag_run_id"] not in waited and datetime.fromisoformat(r["run_after"]).timestamp() >= since - 5]
        for r in fresh:
            console.print(f"generator_retrain run {r['dag_run_id']} ({r['run_type']})", highlight=False)
            api.wait("generator_retrain", r["dag_run_id"], console, timeout=1800)
            waited.add(r["dag_run_id"])
        if not fresh and (waited or time.monotonic() > deadline):
            break
        time.sleep(3)
    if lineage.resolve_alias("generator", "production") is None:
        console.print("no model promoted by an Asset-triggered run; triggering generator_retrain")
        api.wait("generator_retrain", api.trigger("generator_retrain"), console, timeout=1800)


def _wait_render(api: AirflowAPI, store: Storage, s: Settings, name: str, console: Console,
                 timeout: float = 1200) -> str:
    """Wait until campaign_watch has claimed the CSV and campaign_render has filed it; returns processed/ key."""
    deadline = time.monotonic() + timeout
    claimed: str | None = None
    followed: str | None = None
    while time.monotonic() < deadline:
        if claimed is None:
            keys = [o.key for o in store.list(s.bucket_campaigns, f"claimed/{name}.") if o.key.endswith(".csv")]
            if not keys:
                time.sleep(3)
                continue
            claimed = keys[0]
            console.print(f"claimed as s3://{s.bucket_campaigns}/{claimed}; campaign_render triggered")
        if followed is None:  # follow the render run of this CSV once, task by task
            run = next((r for r in api.runs("campaign_render") if (r.get("conf") or {}).get("csv_key") == claimed),
                       None)
            if run is not None:
                followed = run["dag_run_id"]
                state = api.wait("campaign_render", followed, console, timeout=timeout)
                console.print(f"campaign_render {followed}: {state}", highlight=False)
        done = claimed.replace("claimed/", "processed/", 1)
        if store.exists(s.bucket_campaigns, done):
            return done
        failed = claimed.replace("claimed/", "failed/", 1).removesuffix(".csv") + ".report.json"
        if store.exists(s.bucket_campaigns, failed):
            raise DemoFailed(f"campaign_render failed: {store.get_bytes(s.bucket_campaigns, failed).decode()[:500]}")
        time.sleep(3)
    raise ServiceError(f"the campaign was not rendered within {timeout:.0f}s; see the Airflow UI")
