-- Live progress of a render run, for the Campaigns page: one row per planned shard (written when the run
-- is planned, with nothing done), updated by the shard while it renders (every few batches), so a running
-- campaign shows shards and images done of planned, its rate and the time left.
CREATE TABLE IF NOT EXISTS render_progress (
    run_id        TEXT NOT NULL REFERENCES render_runs(run_id),
    shard         INTEGER NOT NULL,
    images_done   BIGINT NOT NULL,
    images_total  BIGINT NOT NULL,
    started_at    TEXT,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (run_id, shard)
);
