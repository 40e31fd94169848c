-- Lineage store and model registry of the campaign image factory.
-- Portable DDL: runs unchanged on SQLite (embedded default) and PostgreSQL (deployments).
-- Timestamps are ISO-8601 UTC text; JSON documents are text. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS datasets (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

-- One curated version of a dataset; version_id is the content hash of accepted records + config.
CREATE TABLE IF NOT EXISTS dataset_versions (
    version_id   TEXT PRIMARY KEY,
    dataset      TEXT NOT NULL REFERENCES datasets(name),
    version      INTEGER NOT NULL,
    uri          TEXT NOT NULL,
    n_records    BIGINT NOT NULL,
    n_rejected   BIGINT NOT NULL,
    config_json  TEXT NOT NULL,
    card_json    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (dataset, version)
);

-- A trained generator: weights + config in S3, trained on one dataset version.
CREATE TABLE IF NOT EXISTS model_versions (
    model_id            TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    version             INTEGER NOT NULL,
    dataset_version_id  TEXT REFERENCES dataset_versions(version_id),
    uri                 TEXT NOT NULL,
    config_json         TEXT NOT NULL,
    metrics_json        TEXT NOT NULL,
    code_version        TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    UNIQUE (name, version)
);

-- Named pointers such as "production" to one model version.
CREATE TABLE IF NOT EXISTS model_aliases (
    name        TEXT NOT NULL,
    alias       TEXT NOT NULL,
    model_id    TEXT NOT NULL REFERENCES model_versions(model_id),
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);

-- Compiled artifacts (ONNX, TensorRT engines) of a model version.
CREATE TABLE IF NOT EXISTS compiled_engines (
    engine_id    TEXT PRIMARY KEY,
    model_id     TEXT NOT NULL REFERENCES model_versions(model_id),
    backend      TEXT NOT NULL,
    uri          TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    key_json     TEXT NOT NULL,
    report_json  TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS campaigns (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

-- One rendering of one prompt CSV.
CREATE TABLE IF NOT EXISTS render_runs (
    run_id         TEXT PRIMARY KEY,
    campaign       TEXT NOT NULL REFERENCES campaigns(name),
    csv_key        TEXT NOT NULL,
    csv_sha256     TEXT NOT NULL,
    model_id       TEXT,
    backend        TEXT,
    status         TEXT NOT NULL,
    rows_read      BIGINT NOT NULL DEFAULT 0,
    rows_accepted  BIGINT NOT NULL DEFAULT 0,
    rows_rejected  BIGINT NOT NULL DEFAULT 0,
    rows_blank     BIGINT NOT NULL DEFAULT 0,
    images         BIGINT NOT NULL DEFAULT 0,
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    summary_json   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS render_runs_by_campaign ON render_runs (campaign, started_at);

-- Every image written: which row, prompt and seed made it, and its checksum.
CREATE TABLE IF NOT EXISTS render_outputs (
    run_id      TEXT NOT NULL REFERENCES render_runs(run_id),
    object_key  TEXT NOT NULL,
    row_number  BIGINT NOT NULL,
    k           INTEGER NOT NULL,
    prompt      TEXT NOT NULL,
    seed        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    PRIMARY KEY (run_id, object_key)
);
CREATE INDEX IF NOT EXISTS render_outputs_by_key ON render_outputs (object_key);

-- Every CSV row that was not rendered, with the reason a person can act on.
CREATE TABLE IF NOT EXISTS rejected_rows (
    run_id       TEXT NOT NULL REFERENCES render_runs(run_id),
    row_number   BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    fields_json  TEXT NOT NULL,
    PRIMARY KEY (run_id, row_number)
);
