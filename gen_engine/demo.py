"""`make demo`: the whole factory on the embedded defaults (local S3, SQLite), run through Airflow itself.

1. `airflow standalone` is started in the background (UI on http://127.0.0.1:8080; stopped by
   `make services-down`);
2. a synthetic captioned-shapes drop lands in s3://datasets/raw/shapes/ and **dataset_ingest** curates it;
3. **generator_retrain** trains the demo config (a few minutes on a CPU), evaluates, gates, compiles
   and promotes the first model;
4. examples/campaigns/spring_sale.csv lands in s3://campaigns/incoming/; **campaign_watch** claims it
   (and queues a triggered run), and **campaign_render** renders the claimed CSV;
5. the gallery is copied to ./out/<campaign>/ and the locations and the UI login are printed.

DAG runs go through `airflow dags test`, so they are recorded and visible in the UI. A
second `make demo` reuses the curated version, skips retraining, and reuses the rendered images.
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

from rich.console import Console

from gen_engine.config import Settings, get_settings
from gen_engine.services import ServiceError, airflow_home, port_free

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN_CSV = REPO / "examples" / "campaigns" / "spring_sale.csv"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def _airflow_env(s: Settings) -> dict[str, str]:
    # `airflow standalone` starts its components as `airflow` from PATH: put this environment's bin first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PATH": path, "AIRFLOW_HOME": str(airflow_home(s)), "GEN_RETRAIN_CONFIG": str(DEMO_CONFIG),
                         "GEN_RETRAIN_DATASET": "shapes", "GEN_INGEST_SCHEDULE": "@daily",
                         "PYTHONPATH": str(REPO / "plugins")}


def _airflow(s: Settings, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("airflow"))
    res = subprocess.run([exe, *args], env=_airflow_env(s), text=True,
                         capture_output=quiet, check=False)
    if check and res.returncode != 0:
        raise ServiceError(f"`airflow {' '.join(args)}` failed (exit {res.returncode})"
                           + (f":\n{res.stderr[-1500:]}" if quiet else ""))
    return res


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
    """The synthetic shapes drop as an imagefolder zip (made once)."""
    from gen_engine.datasets.synth import write_imagefolder

    z = work / "shapes-drop.zip"
    if z.exists():
        return z
    folder = work / "shapes32"
    if not (folder / "metadata.jsonl").exists():
        write_imagefolder(folder, n=2000, size=32, seed=0)
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return z


def run_demo(console: Console) -> dict:
    from gen_engine.lineage import LineageStore
    from gen_engine.storage import Storage

    t0 = time.monotonic()
    s = get_settings()
    store, lineage = Storage.from_settings(s), LineageStore.from_settings(s)
    work = s.local_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)

    console.rule("1/5 Airflow")
    ui, password = start_standalone(s, console)
    _airflow(s, "dags", "reserialize", check=False, quiet=True)  # the UI lists the DAGs at once

    console.rule("2/5 dataset_ingest")
    store.put_file(s.bucket_datasets, "raw/shapes/demo-drop.zip", _drop_zip(work), content_type="application/zip")
    _airflow(s, "dags", "test", "dataset_ingest", quiet=True)
    v = lineage.dataset_version("shapes")
    if v is None:
        raise RuntimeError("dataset_ingest did not produce a curated version; see the Airflow log of the run")
    console.print(f"curated: shapes v{v['version']} ({v['n_records']} records) at {v['uri']}")

    console.rule("3/5 generator_retrain (a few minutes on a CPU)")
    _airflow(s, "dags", "test", "generator_retrain", quiet=True)
    prod = lineage.resolve_alias("generator", "production")
    if prod is None:
        raise RuntimeError("generator_retrain did not promote a model; see the Airflow log of the run")
    metrics = json.loads(prod["metrics_json"] or "{}")
    console.print(f"production model: {prod['model_id']} (version {prod['version']}); "
                  + (f"R-precision {metrics['r_precision']:.2f}, FD {metrics['fd']:.3f}" if metrics else ""))

    console.rule("4/5 campaign_watch -> campaign_render")
    name = CAMPAIGN_CSV.stem
    store.put_file(s.bucket_campaigns, f"incoming/{name}.csv", CAMPAIGN_CSV, content_type="text/csv")
    _airflow(s, "dags", "test", "campaign_watch", quiet=True)
    claimed = [o.key for o in store.list(s.bucket_campaigns, f"claimed/{name}.") if o.key.endswith(".csv")]
    if not claimed:
        raise RuntimeError("campaign_watch did not claim the CSV; see the Airflow log of the run")
    # campaign_watch also queued a triggered run; the demo renders the claimed CSV in the foreground.
    conf = json.dumps({"csv_key": claimed[0], "campaign": name})
    _airflow(s, "dags", "test", "campaign_render", "--conf", conf, quiet=True, check=False)
    done = claimed[0].replace("claimed/", "processed/", 1)
    if not store.exists(s.bucket_campaigns, done):
        failed = claimed[0].replace("claimed/", "failed/", 1).removesuffix(".csv") + ".report.json"
        why = store.get_bytes(s.bucket_campaigns, failed).decode() if store.exists(s.bucket_campaigns, failed) else ""
        raise RuntimeError(f"campaign_render failed: {why[:500] or 'see the Airflow UI'}")
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
    console.print(f"lineage:  genengine lineage {s.bucket_renders}/{prefix}images/hero-red-circle_0.png")
    console.print(f"done in {time.monotonic() - t0:.0f}s")
    return summary
