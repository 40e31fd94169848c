"""The lineage store and model registry (SQLAlchemy Core over the DDL in ``sql/``).

It answers "where did this image come from?": image -> render run -> CSV -> row -> prompt/seed ->
model version -> dataset version -> training config -> code version. The same code runs on the
embedded SQLite file (default, under ``GEN_LOCAL_DIR``) and on PostgreSQL (``GEN_LINEAGE_DB_URL``).

The schema is a set of numbered SQL files applied in order; each applied file is recorded in
``schema_migrations``, and every statement is idempotent, so two processes applying at once are safe.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _split_sql(script: str) -> list[str]:
    """Statements of a DDL file: comments dropped, split on ';' at line ends."""
    body = re.sub(r"--[^\n]*", "", script)
    return [s.strip() for s in re.split(r";\s*\n", body + "\n") if s.strip()]


class LineageStore:
    """Read and write lineage rows. One instance per process; thread-safe via the engine's pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @classmethod
    def from_settings(cls, settings: Any) -> LineageStore:
        store = cls(settings.lineage_url)
        store.apply_schema()
        return store

    # --- schema -------------------------------------------------------------------------------------
    def apply_schema(self, sql_dir: Path = SQL_DIR) -> list[str]:
        """Apply every not-yet-applied ``NNN_*.sql`` file in order; returns the ones applied now."""
        applied_now: list[str] = []
        with self.engine.begin() as c:
            c.execute(sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            ))
            done = {r[0] for r in c.execute(sa.text("SELECT version FROM schema_migrations"))}
        for path in sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql")):
            if path.stem in done:
                continue
            with self.engine.begin() as c:
                for stmt in _split_sql(path.read_text()):
                    c.execute(sa.text(stmt))
                # A concurrent process may have recorded it first; the DDL itself is idempotent.
                _insert_ignore(c, "schema_migrations", {"version": path.stem, "applied_at": utcnow()},
                               key="version")
            applied_now.append(path.stem)
        return applied_now

    def tables(self) -> set[str]:
        return set(sa.inspect(self.engine).get_table_names())

    # --- small helpers --------------------------------------------------------------------------------
    def _one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(sa.text(sql), params).mappings().first()
        return dict(row) if row else None

    def _all(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(sql), params).mappings()]

    # --- datasets -------------------------------------------------------------------------------------
    def record_dataset_version(
        self, dataset: str, version_id: str, *, uri: str, n_records: int, n_rejected: int,
        config: Mapping[str, Any], card: Mapping[str, Any],
    ) -> int:
        """Register a curated version; idempotent on ``version_id``. Returns its number (1, 2, ...).

        This insert is the version's commit. The number is allocated inside it; two writers that read
        the same MAX collide on UNIQUE (dataset, version), and the loser retries with the next number
        (or finds its content already registered by the other)."""
        def insert(c: sa.Connection) -> int:
            _insert_ignore(c, "datasets", {"name": dataset, "created_at": utcnow()}, key="name")
            n = c.execute(sa.text("SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE dataset = :d"),
                          {"d": dataset}).scalar_one()
            c.execute(sa.text(
                "INSERT INTO dataset_versions VALUES (:version_id, :dataset, :version, :uri, :n_records, "
                ":n_rejected, :config_json, :card_json, :created_at)"
            ), {"version_id": version_id, "dataset": dataset, "version": n, "uri": uri, "n_records": n_records,
                "n_rejected": n_rejected, "config_json": _dumps(config), "card_json": _dumps(card),
                "created_at": utcnow()})
            return int(n)

        return self._allocate("SELECT version FROM dataset_versions WHERE version_id = :k", version_id, insert)

    def _allocate(self, existing_sql: str, key: str, insert: Any, attempts: int = 8) -> int:
        """Run ``insert(conn)`` (which numbers a new row MAX()+1) unless ``existing_sql`` finds ``key``;
        on a unique-key collision with a concurrent writer, look again and retry."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as c:
                    found = c.execute(sa.text(existing_sql), {"k": key}).first()
                    return int(found[0]) if found else insert(c)
            except (sa.exc.IntegrityError, sa.exc.OperationalError) as e:
                # IntegrityError: the number was taken (PostgreSQL); "database is locked": SQLite refused
                # to upgrade a reader whose snapshot another writer had moved past.
                if attempt == attempts - 1 or (isinstance(e, sa.exc.OperationalError) and "locked" not in str(e)):
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def dataset_version(self, dataset: str, version: int | None = None) -> dict[str, Any] | None:
        """One version of a dataset (the latest when ``version`` is None)."""
        if version is None:
            return self._one("SELECT * FROM dataset_versions WHERE dataset = :d ORDER BY version DESC LIMIT 1",
                             d=dataset)
        return self._one("SELECT * FROM dataset_versions WHERE dataset = :d AND version = :v", d=dataset, v=version)

    def dataset_version_by_id(self, version_id: str) -> dict[str, Any] | None:
        """The version with this content id (an ingest of identical content finds its earlier version)."""
        return self._one("SELECT * FROM dataset_versions WHERE version_id = :v", v=version_id)

    def datasets(self) -> list[dict[str, Any]]:
        return self._all(
            "SELECT d.name, COUNT(v.version_id) AS versions, MAX(v.version) AS latest FROM datasets d "
            "LEFT JOIN dataset_versions v ON v.dataset = d.name GROUP BY d.name ORDER BY d.name"
        )

    # --- models -----------------------------------------------------------------------------------
    def register_model(
        self, name: str, model_id: str, *, uri: str, dataset_version_id: str | None,
        config: Mapping[str, Any], metrics: Mapping[str, Any], code_version: str, parent_model_id: str | None = None,
    ) -> int:
        """Register a trained model version; idempotent on ``model_id``. Returns its number (allocated as
        `record_dataset_version` allocates, safe against concurrent registrations).
        ``parent_model_id``: the model it was warm-started from (None: trained from scratch)."""
        def insert(c: sa.Connection) -> int:
            n = c.execute(sa.text("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = :n"),
                          {"n": name}).scalar_one()
            c.execute(sa.text(
                "INSERT INTO model_versions (model_id, name, version, dataset_version_id, uri, config_json, "
                "metrics_json, code_version, created_at, parent_model_id) VALUES (:model_id, :name, :version, "
                ":dvid, :uri, :config_json, :metrics_json, :code_version, :created_at, :parent)"
            ), {"model_id": model_id, "name": name, "version": n, "dvid": dataset_version_id, "uri": uri,
                "config_json": _dumps(config), "metrics_json": _dumps(metrics), "code_version": code_version,
                "created_at": utcnow(), "parent": parent_model_id})
            return int(n)

        return self._allocate("SELECT version FROM model_versions WHERE model_id = :k", model_id, insert)

    def update_model_metrics(self, model_id: str, metrics: Mapping[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("UPDATE model_versions SET metrics_json = :m WHERE model_id = :id"),
                      {"m": _dumps(metrics), "id": model_id})

    def record_decision(self, model_id: str, kind: str, decision: Mapping[str, Any]) -> None:
        """Add a decision about a model version (``gate``, ``promotion``) to its metrics, with its time: why
        a challenger was or was not promoted stays on record beside its figures."""
        with self.engine.begin() as c:
            raw = c.execute(sa.text("SELECT metrics_json FROM model_versions WHERE model_id = :id"),
                            {"id": model_id}).scalar()
            if raw is None:
                return
            metrics = json.loads(raw) | {kind: {**decision, "at": utcnow()}}
            c.execute(sa.text("UPDATE model_versions SET metrics_json = :m WHERE model_id = :id"),
                      {"m": _dumps(metrics), "id": model_id})

    def models(self, name: str = "generator", limit: int = 100) -> list[dict[str, Any]]:
        """Model versions, newest first."""
        return self._all("SELECT * FROM model_versions WHERE name = :n ORDER BY version DESC LIMIT :k",
                         n=name, k=limit)

    def aliases(self, name: str = "generator") -> dict[str, str]:
        """alias -> model id."""
        return {r["alias"]: r["model_id"] for r in self._all("SELECT alias, model_id FROM model_aliases "
                                                              "WHERE name = :n", n=name)}

    def model(self, model_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM model_versions WHERE model_id = :m", m=model_id)

    def models_trained_on(self, dataset_version_id: str) -> list[dict[str, Any]]:
        """Every model version trained on a curated version, oldest first."""
        return self._all("SELECT * FROM model_versions WHERE dataset_version_id = :d ORDER BY version",
                         d=dataset_version_id)

    def set_alias(self, name: str, alias: str, model_id: str, *, expect: str | None | object = ...) -> bool:
        """Point ``name@alias`` (e.g. generator@production) at a model version, in one statement (an
        upsert: concurrent writers never see the alias missing nor collide on its key).

        ``expect``: compare-and-set. The alias moves only if it still points at ``expect`` (None: only
        if it does not exist yet); returns False, changing nothing, when another writer moved it first."""
        t = utcnow()
        with self.engine.begin() as c:
            if expect is ...:
                c.execute(sa.text(
                    "INSERT INTO model_aliases (name, alias, model_id, updated_at) VALUES (:n, :a, :m, :t) "
                    "ON CONFLICT (name, alias) DO UPDATE SET model_id = excluded.model_id, "
                    "updated_at = excluded.updated_at"), {"n": name, "a": alias, "m": model_id, "t": t})
                return True
            if expect is None:
                got = c.execute(sa.text(
                    "INSERT INTO model_aliases (name, alias, model_id, updated_at) VALUES (:n, :a, :m, :t) "
                    "ON CONFLICT (name, alias) DO NOTHING"), {"n": name, "a": alias, "m": model_id, "t": t})
            else:
                got = c.execute(sa.text(
                    "UPDATE model_aliases SET model_id = :m, updated_at = :t "
                    "WHERE name = :n AND alias = :a AND model_id = :old"),
                    {"n": name, "a": alias, "m": model_id, "t": t, "old": expect})
            return got.rowcount == 1

    # --- model files (integrity) ---------------------------------------------------------------------
    def record_model_files(self, model_id: str, files: Mapping[str, tuple[str, int]]) -> None:
        """The sha256 and size of each file (name -> (sha256, size)) of a model version in S3; a file
        uploaded again (a recompile) replaces its entry."""
        t = utcnow()
        with self.engine.begin() as c:
            for f, (sha, size) in files.items():
                c.execute(sa.text(
                    "INSERT INTO model_files (model_id, file, sha256, size, updated_at) VALUES (:m, :f, :s, :z, :t) "
                    "ON CONFLICT (model_id, file) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
                    "updated_at = excluded.updated_at"), {"m": model_id, "f": f, "s": sha, "z": size, "t": t})

    def model_files(self, model_id: str) -> dict[str, str]:
        """file -> sha256 of a model version's recorded files (empty for versions published before)."""
        return {r["file"]: r["sha256"] for r in self._all("SELECT file, sha256 FROM model_files WHERE model_id = :m",
                                                          m=model_id)}

    def resolve_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        """The model version an alias points at, or None."""
        return self._one(
            "SELECT m.* FROM model_aliases a JOIN model_versions m ON m.model_id = a.model_id "
            "WHERE a.name = :n AND a.alias = :a", n=name, a=alias)

    def register_engine(
        self, engine_id: str, model_id: str, *, backend: str, uri: str, sha256: str,
        key: Mapping[str, Any], report: Mapping[str, Any],
    ) -> None:
        with self.engine.begin() as c:
            _insert_ignore(c, "compiled_engines", {
                "engine_id": engine_id, "model_id": model_id, "backend": backend, "uri": uri, "sha256": sha256,
                "key_json": _dumps(key), "report_json": _dumps(report), "created_at": utcnow()},
                key="engine_id")

    def engines(self, model_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM compiled_engines WHERE model_id = :m ORDER BY created_at", m=model_id)

    # --- campaigns and render runs -----------------------------------------------------------------
    def start_run(
        self, run_id: str, campaign: str, *, csv_key: str, csv_sha256: str, model_id: str | None,
        backend: str | None, dag_run: tuple[str, str] | None = None, counts: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a render run as started. Idempotent: a resumed run keeps its row. A run id fixes its
        model (`render.plan.run_identity`); a caller reusing one with another model gets the old output
        rows dropped rather than mixed with the new. ``dag_run``: (dag id, run id) of the Airflow run
        rendering it (the Campaigns page links it); a later DAG run resuming it takes its place. ``counts``:
        the plan's row counts (rows_read, rows_accepted, rows_rejected, rows_blank), shown while it renders."""
        with self.engine.begin() as c:
            _insert_ignore(c, "campaigns", {"name": campaign, "created_at": utcnow()}, key="name")
            _insert_ignore(c, "render_runs", {
                "run_id": run_id, "campaign": campaign, "csv_key": csv_key, "csv_sha256": csv_sha256,
                "model_id": model_id, "backend": backend, "status": "running", "started_at": utcnow()},
                key="run_id")
            old = c.execute(sa.text("SELECT model_id FROM render_runs WHERE run_id = :r"), {"r": run_id}).scalar()
            if old != model_id:
                c.execute(sa.text("DELETE FROM render_outputs WHERE run_id = :r"), {"r": run_id})
            c.execute(sa.text("UPDATE render_runs SET model_id = :m, backend = :b, status = 'running' "
                              "WHERE run_id = :r"), {"m": model_id, "b": backend, "r": run_id})
            if counts is not None:
                c.execute(sa.text("UPDATE render_runs SET rows_read = :rr, rows_accepted = :ra, rows_rejected = :rj, "
                                  "rows_blank = :rb WHERE run_id = :r"),
                          {"r": run_id, **{k: int(counts.get(c_, 0)) for k, c_ in (
                              ("rr", "rows_read"), ("ra", "rows_accepted"), ("rj", "rows_rejected"),
                              ("rb", "rows_blank"))}})
            if dag_run is not None:
                c.execute(sa.text("UPDATE render_runs SET dag_id = :d, dag_run_id = :dr WHERE run_id = :r"),
                          {"d": dag_run[0], "dr": dag_run[1], "r": run_id})

    def finish_run(self, run_id: str, *, status: str, counts: Mapping[str, int], summary: Mapping[str, Any]) -> None:
        cols = ("rows_read", "rows_accepted", "rows_rejected", "rows_blank", "images")
        with self.engine.begin() as c:
            c.execute(sa.text(
                "UPDATE render_runs SET status = :status, finished_at = :t, summary_json = :s, "  # noqa: S608
                + ", ".join(f"{k} = :{k}" for k in cols) + " WHERE run_id = :run_id"
            ), {"status": status, "t": utcnow(), "s": _dumps(summary), "run_id": run_id,
                **{k: int(counts.get(k, 0)) for k in cols}})

    def fail_run(self, run_id: str, stats: Mapping[str, Any], error: str, csv_key: str | None) -> None:
        """Mark a planned run failed, with the plan's row counts (no images) and the reason."""
        counts = {k: int(stats.get(k, 0)) for k in ("rows_read", "rows_accepted", "rows_rejected", "rows_blank")}
        self.finish_run(run_id, status="failed", counts={**counts, "images": 0},
                        summary={"error": error[:500], "csv_key": csv_key})

    def plan_progress(self, run_id: str, shards: Iterable[tuple[int, int]]) -> None:
        """One progress row per planned shard (index, images), nothing done; a resumed run keeps its rows."""
        rows = [{"run_id": run_id, "shard": i, "images_done": 0, "images_total": n, "started_at": None,
                 "updated_at": utcnow()} for i, n in shards]
        self._bulk_insert_ignore("render_progress", rows, ("run_id", "shard"))

    def shard_progress(self, run_id: str, shard: int, done: int, total: int) -> None:
        """A shard's images done so far (its first report also records when it started)."""
        now = utcnow()
        with self.engine.begin() as c:
            n = c.execute(sa.text(
                "UPDATE render_progress SET images_done = :d, images_total = :t, updated_at = :now, "
                "started_at = COALESCE(started_at, :now) WHERE run_id = :r AND shard = :s"),
                {"d": done, "t": total, "now": now, "r": run_id, "s": shard}).rowcount
            if not n:
                _insert_ignore(c, "render_progress", {"run_id": run_id, "shard": shard, "images_done": done,
                                                      "images_total": total, "started_at": now, "updated_at": now},
                               key="run_id, shard")

    def progress(self, run_id: str) -> dict[str, Any] | None:
        """Shards and images done of planned, images/s since the first shard started, seconds left."""
        rows = self._all("SELECT * FROM render_progress WHERE run_id = :r", r=run_id)
        if not rows:
            return None
        done, total = sum(r["images_done"] for r in rows), sum(r["images_total"] for r in rows)
        starts = [r["started_at"] for r in rows if r["started_at"]]
        rate = None
        if starts and done:
            span = (datetime.fromisoformat(max(r["updated_at"] for r in rows))
                    - datetime.fromisoformat(min(starts))).total_seconds()
            rate = done / span if span > 0 else None
        return {"shards_done": sum(r["images_done"] >= r["images_total"] for r in rows), "shards_total": len(rows),
                "images_done": done, "images_total": total, "images_per_s": rate,
                "eta_s": (total - done) / rate if rate else None}

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM render_runs WHERE run_id = :r", r=run_id)

    def runs(self, campaign: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where = "WHERE campaign = :c " if campaign else ""
        return self._all(f"SELECT * FROM render_runs {where}ORDER BY started_at DESC LIMIT :n",  # noqa: S608
                         c=campaign, n=limit)

    def add_outputs(self, run_id: str, outputs: Iterable[Mapping[str, Any]]) -> int:
        """Record written images (object_key, row_number, k, prompt, seed, sha256, and label and c2pa where
        the shard recorded them); re-adding is a no-op."""
        rows = [{"run_id": run_id, **{k: o[k] for k in ("object_key", "row_number", "k", "prompt", "seed", "sha256")},
                 "label": o.get("label"), "c2pa": o.get("c2pa")} for o in outputs]
        return self._bulk_insert_ignore("render_outputs", rows, ("run_id", "object_key"))

    def add_rejected(self, run_id: str, rejected: Iterable[Mapping[str, Any]]) -> int:
        """Record rejected rows (row_number, reason, fields); re-adding is a no-op."""
        rows = [{"run_id": run_id, "row_number": r["row_number"], "reason": r["reason"],
                 "fields_json": _dumps(r.get("fields", {}))} for r in rejected]
        return self._bulk_insert_ignore("rejected_rows", rows, ("run_id", "row_number"))

    def run_outputs(self, run_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """A run's images in row order (object_key, prompt, seed, row_number, k, label, c2pa), at most ``limit``."""
        return self._all("SELECT object_key, prompt, seed, row_number, k, label, c2pa FROM render_outputs "
                         "WHERE run_id = :r "
                         "ORDER BY row_number, k LIMIT :n", r=run_id, n=limit)

    def rejected(self, run_id: str) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM rejected_rows WHERE run_id = :r ORDER BY row_number", r=run_id)

    def _bulk_insert_ignore(self, table: str, rows: list[dict[str, Any]], key: tuple[str, ...]) -> int:
        if not rows:
            return 0
        cols = list(rows[0])
        conflict = f" ON CONFLICT ({', '.join(key)}) DO NOTHING"  # SQLite >= 3.24 and PostgreSQL
        # Table and column names are this module's constants; values are bound parameters.
        names, params = ", ".join(cols), ", ".join(":" + k for k in cols)
        sql = sa.text(f"INSERT INTO {table} ({names}) VALUES ({params}){conflict}")  # noqa: S608
        with self.engine.begin() as c:
            res = c.execute(sql, rows)
        return max(res.rowcount, 0)

    # --- the trace --------------------------------------------------------------------------------
    def trace(self, object_key: str) -> dict[str, Any] | None:
        """Everything known about one rendered image, from its row to the code that trained the model."""
        row = self._one(
            "SELECT o.object_key, o.row_number, o.k, o.prompt, o.seed, o.sha256 AS image_sha256, "
            "r.run_id, r.campaign, r.csv_key, r.csv_sha256, r.backend, r.started_at AS run_started_at, "
            "m.model_id, m.name AS model_name, m.version AS model_version, m.uri AS model_uri, "
            "m.parent_model_id, "
            "m.config_json AS training_config_json, m.code_version, "
            "d.version_id AS dataset_version_id, d.dataset, d.version AS dataset_version, d.uri AS dataset_uri "
            "FROM render_outputs o JOIN render_runs r ON r.run_id = o.run_id "
            "LEFT JOIN model_versions m ON m.model_id = r.model_id "
            "LEFT JOIN dataset_versions d ON d.version_id = m.dataset_version_id "
            "WHERE o.object_key = :k ORDER BY r.started_at DESC LIMIT 1", k=object_key)
        if row and row.get("training_config_json"):
            row["training_config"] = json.loads(row.pop("training_config_json"))
        return row


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _insert_ignore(conn: sa.Connection, table: str, values: dict[str, Any], *, key: str) -> None:
    cols = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    sql = f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO NOTHING"  # noqa: S608
    conn.execute(sa.text(sql), values)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets readers (the gallery plugin) work while a render run writes; enforce foreign keys."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
