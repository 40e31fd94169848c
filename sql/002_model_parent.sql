-- Warm start: a model fine-tuned from another records it (the champion it started from).
ALTER TABLE model_versions ADD COLUMN parent_model_id TEXT;
