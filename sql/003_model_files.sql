-- Integrity of model artifacts: the sha256 and size of every file a model version has in S3 (weights,
-- model.json, compiled engines). Resolving a model verifies each download and each cache hit against it.
CREATE TABLE IF NOT EXISTS model_files (
    model_id    TEXT NOT NULL REFERENCES model_versions(model_id),
    file        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (model_id, file)
);
