-- What the Campaigns page links and shows: the Airflow DAG run that rendered a run (NULL for the CLI),
-- and each image's visible label (none/corner/edge) and C2PA state (signed/unsigned), as in its manifest.
ALTER TABLE render_runs ADD COLUMN dag_id TEXT;
ALTER TABLE render_runs ADD COLUMN dag_run_id TEXT;
ALTER TABLE render_outputs ADD COLUMN label TEXT;
ALTER TABLE render_outputs ADD COLUMN c2pa TEXT;
