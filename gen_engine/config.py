"""One typed settings object for the whole factory.

Every knob is read from the environment with the prefix ``GEN_`` (``GEN_S3_ENDPOINT``,
``GEN_LINEAGE_DB_URL``, ...), or from a ``.env`` file in the working directory. S3 credentials are
also accepted under the names every S3 tool knows (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).
Secrets are never given defaults here: the Makefile sets documented local-only defaults for the
embedded server, deployments set their own.

Print the resolved settings with ``genengine config`` (secrets masked).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUCKET_ROLES = ("datasets", "models", "campaigns", "renders")
REPO = Path(__file__).resolve().parent.parent


# Kinds of Airflow task, for queue routing (`Settings.task_route`), and the pool of those that have one
# (pool `gpu`: one training or evaluation at a time per GPU; pool `render`: the campaign shards).
TASK_KINDS = ("train", "evaluate", "compile", "render")
TASK_POOLS = {"train": "gpu", "evaluate": "gpu", "render": "render"}


class Settings(BaseSettings):
    """Resolved configuration of the factory (env prefix ``GEN_``)."""

    model_config = SettingsConfigDict(
        env_prefix="GEN_", env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- where local state lives -----------------------------------------------------------------
    local_dir: Path = Field(
        Path(".local"), description="Project-local state: embedded S3 data, SQLite files, pid files, logs."
    )

    # --- S3 ---------------------------------------------------------------------------------------
    s3_endpoint: str | None = Field(
        None,
        description="host:port of the S3 server. Unset: the embedded SeaweedFS on 127.0.0.1:local_s3_port.",
    )
    s3_secure: bool = Field(False, description="Use HTTPS for S3.")
    s3_region: str | None = Field(None, description="S3 region, if the server needs one.")
    s3_access_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("GEN_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("GEN_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_retries: int = Field(4, ge=0, le=20, description="Retries of a transient S3 failure (backoff doubles).")
    s3_timeout_s: float = Field(10.0, gt=0, description="Connect and read timeout of one S3 request.")
    bucket_datasets: str = "datasets"
    bucket_models: str = "models"
    bucket_campaigns: str = "campaigns"
    bucket_renders: str = "renders"

    # --- embedded S3 server (SeaweedFS `weed mini`), used when s3_endpoint is unset ----------------
    # Each gRPC port is its HTTP port + 10000, as SeaweedFS expects.
    local_s3_port: int = Field(8333, description="S3 API port of the embedded server.")
    local_s3_master_port: int = 9333
    local_s3_volume_port: int = 9340
    local_s3_filer_port: int = 8888
    local_s3_admin_port: int = 23646 - 10000  # 13646 (+10000 = 23646 for its gRPC port)

    # --- lineage store ----------------------------------------------------------------------------
    lineage_db_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL (postgresql+psycopg://... in deployments). Unset: SQLite under local_dir.",
    )

    # --- retraining (generator_retrain DAG) ------------------------------------------------------------
    retrain_schedule: str = Field("0 2 * * *", description="Cron schedule (UTC) of the nightly retrain; it also "
                                                            "runs whenever a curated dataset is updated.")
    retrain_dataset: str = Field("starter", description="Curated dataset the nightly retrain trains on.")
    retrain_config: Path = Field(REPO / "configs" / "demo.yaml", description="Training config of the nightly "
                                 "retrain (the demo's: a short warm-started fine-tune of the starter model).")
    starter_model_dir: Path = Field(REPO / "starter" / "model", description="The shipped starter model "
                                    "(`genengine models bootstrap` publishes it when there is no production model).")
    retrain_upsampler_steps: int = Field(3000, ge=0, description="Steps of the x4 upsampler the retrain trains "
                                         "when the dataset's training images differ from those its current "
                                         "upsampler learned (0: never; a warm start keeps its parent's).")
    eval_encoder_steps: int = Field(1500, ge=1, description="Training steps of a dataset version's evaluation "
                                                            "encoder (trained once per version, then cached).")
    eval_text_encoder: str | None = Field(None, description="The caption space evaluations score in (a name in "
                                          "`gen_engine.text.ENCODERS`); unset: the challenger's own text encoder.")
    retrain_device: str = Field("auto", description="auto | cpu | cuda")
    gate_max_fd_increase: float = Field(0.02, ge=0, description="Promote only if FD is worse by at most this fraction.")
    gate_max_r_precision_drop: float = Field(0.02, ge=0, description="... and R-precision drops by at most this.")
    compile_text_encoder: bool = Field(True, description="Also export the MiniLM text encoder to ONNX when "
                                                         "compiling (once per encoder version, shared by all models).")

    eval_images: int = Field(500, ge=10, description="Held-out captions rendered per model when the nightly "
                                                     "retrain evaluates challenger and champion.")

    # --- dataset ingest (dataset_ingest DAG, `genengine dataset ingest`; see datasets.ingest.CurationConfig) ---
    claim_lease_s: float = Field(300.0, gt=0, description="How long a claim marker (a CSV being moved to "
                                 "claimed/) holds before a later claimer may take it over from a killed worker.")
    ingest_schedule: str = Field("*/10 * * * *", description="Cron schedule of the dataset_ingest DAG.")
    ingest_image_size: int = Field(64, ge=8, description="Side of the stored training images (px): the largest "
                                                        "training resolution.")
    ingest_master_size: int = Field(256, ge=0, description="Side of the stored masters (px, never upscaled; 0: none).")
    ingest_min_side: int = Field(32, ge=1, description="Images whose smaller side is below this are rejected.")
    ingest_max_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb guard, read from the header.")
    ingest_max_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted image file (bytes).")
    ingest_max_caption_chars: int = Field(1000, ge=1, description="Longest accepted caption (characters).")
    ingest_val_percent: int = Field(5, ge=0, le=50, description="Percent of images held out (by content hash).")
    ingest_min_records: int = Field(1, ge=1, description="A drop with fewer accepted records is rejected.")
    ingest_max_rejected_fraction: float = Field(0.2, ge=0, le=1, description="A drop rejecting more is rejected.")
    ingest_shard_records: int = Field(1000, ge=1, description="Records per curated parquet shard (~1 MB at 64 px).")
    ingest_max_metadata_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Largest metadata.jsonl / "
                                           "metadata.csv of a drop (bytes; it is held in memory).")
    ingest_max_archive_bytes: int = Field(64 * 1024**3, ge=1, description="A drop whose members add up to more "
                                          "(uncompressed bytes) is refused as a whole: archive bombs.")
    ingest_max_members: int = Field(2_000_000, ge=1, description="A drop with more archive members is refused.")
    ingest_max_compression_ratio: float = Field(200.0, ge=1, description="A zip member (over 1 MiB) or a "
                                                "compressed tar expanding more than this is refused: bombs.")

    # --- rendering ----------------------------------------------------------------------------------
    render_shard_size: int = Field(2048, ge=1, description="Images per render shard (one mapped Airflow task).")
    render_batch_size: int = Field(32, ge=1, description="Images per inference batch (32: the CPU's sweet spot "
                                                         "at 64 px; larger batches only add peak memory).")
    render_io_threads: int = Field(8, ge=1, description="Threads that encode and upload rendered images.")
    render_device_turns: bool = Field(True, description="Render shards on one worker draw one at a time: the "
                                      "drawing holds a lock under local_dir (and training on CUDA holds it too), "
                                      "so a worker running several shards at once overlaps one's start-up, "
                                      "encoding and upload with another's drawing, never two models on one GPU.")
    render_png_level: int = Field(2, ge=0, le=9, description="zlib level of the PNGs (lossless at every level). "
                                  "2: encodes a 256 px image about twice as fast as Pillow's 6, for about 17% "
                                  "more bytes (measured on starter images); 9: smallest files, 10x slower.")
    render_allowed_sizes: tuple[str, ...] = Field(
        ("64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024"),
        description="Sizes a CSV row may ask for (`size` column).")
    render_default_format: str = Field("png", description="Format of rows that give none (png, webp, jpeg).")
    render_default_variety: float = Field(1.0, ge=0, le=1, description="Variety of rows that give none.")
    render_max_prompt_chars: int = Field(500, ge=1, description="Longest accepted prompt (characters).")
    render_max_count: int = Field(16, ge=1, description="Most images one row may ask for (`count` column).")

    # --- labels and provenance (render.labels, render.provenance; `genengine verify`) ----------------
    provenance_producer: str = Field("gen-engine", description="This deployment's name as the content producer "
                                     "(the GB 45438 AIGC label's ContentProducer, the C2PA manifest's author): "
                                     "the service provider's name or registration code.")
    render_label: str = Field("none", description="Visible AI label of every image: none, corner or edge (a CSV's "
                              "`label` column and a campaign's `label` parameter override it).")
    render_label_text: str = Field("", max_length=40, description="Text of the visible label. Empty: by the "
                                   "prompt's script, \"AI生成\" for Chinese and Japanese, \"AI-generated\" otherwise.")
    render_c2pa: bool = Field(True, description="Sign a C2PA manifest into every image (created, "
                              "trainedAlgorithmicMedia, the model and the prompt's hash).")
    render_embed_source_keys: bool = Field(True, description="Write internal object keys (the CSV's bucket key, "
                                           "the image's key) into the lineage inside delivered files. Off: the files "
                                           "carry ids only; the lineage store keeps the keys.")
    c2pa_cert_chain: str | None = Field(None, description="Signing certificate chain (PEM, leaf first): a path, or "
                                        "the PEM text. Unset (and no c2pa_signer): a development chain generated "
                                        "under local_dir/c2pa/ on first use, marked DEVELOPMENT ONLY.")
    c2pa_private_key: SecretStr | None = Field(None, description="The signing key (PEM): a path or the PEM text.")
    c2pa_signing_alg: str = Field("es256", description="Algorithm of the key: es256, es384, es512, ps256, ed25519.")
    c2pa_tsa_url: str | None = Field(None, description="RFC 3161 time-stamp authority for the signatures.")
    c2pa_signer: str | None = Field(None, description="'module:function' returning a c2pa.Signer (a KMS or HSM "
                                    "signer made with c2pa.Signer.from_callback); wins over the key settings.")
    c2pa_trust_anchors: str | None = Field(None, description="PEM root certificates `genengine verify` trusts (a "
                                           "path or the text); given, a manifest must chain to one of them.")

    # --- Airflow ------------------------------------------------------------------------------------
    airflow_gpu_pool_slots: int = Field(1, ge=1, description="Slots of the Airflow pool `gpu`.")
    airflow_render_pool_slots: int = Field(2, ge=1, description="Slots of the Airflow pool `render`.")
    airflow_render_shards_per_run: int = Field(2, ge=1, description="Shards of one campaign run rendering at once "
                                               "(render_shard's max_active_tis_per_dag); the `render` pool caps "
                                               "them across campaigns.")
    airflow_default_queue: str = Field("default", description="Celery queue of every task not routed to the GPU.")
    airflow_gpu_queue: str = Field("default", description="Celery queue of the GPU worker (the deployment: `gpu`); "
                                   "the task kinds in airflow_gpu_tasks go to it.")
    airflow_gpu_tasks: str = Field("train,evaluate,compile,render", description="Task kinds routed to "
                                   "airflow_gpu_queue, comma-separated, of: train, evaluate, compile, render "
                                   "(render: the campaign shards).")
    airflow_retry_delay_s: int = Field(30, ge=1, description="First retry delay of a failed task (doubling "
                                       "after each try, at most 10 minutes): transient failures, a lost worker.")
    airflow_s3_conn_id: str = "gen_s3"

    @field_validator("s3_endpoint")
    @classmethod
    def _strip_scheme(cls, v: str | None) -> str | None:
        """Accept ``http://host:port`` too: the minio SDK wants host:port and a separate secure flag."""
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        for scheme in ("http://", "https://"):
            if v.startswith(scheme):
                v = v[len(scheme) :]
        return v

    @field_validator("render_label")
    @classmethod
    def _known_label(cls, v: str) -> str:
        if v.strip().lower() not in ("none", "corner", "edge"):
            raise ValueError(f"render_label must be none, corner or edge, not {v!r}")
        return v.strip().lower()

    @field_validator("airflow_gpu_tasks")
    @classmethod
    def _known_task_kinds(cls, v: str) -> str:
        unknown = {k.strip() for k in v.split(",") if k.strip()} - set(TASK_KINDS)
        if unknown:
            raise ValueError(f"unknown task kind(s) {sorted(unknown)}; known: {', '.join(TASK_KINDS)}")
        return v

    def task_route(self, kind: str) -> dict[str, str]:
        """The Airflow queue (and pool, for kinds that have one) of a kind of task: the GPU queue for the
        kinds in ``airflow_gpu_tasks``, the default queue for the rest (``kind`` "other")."""
        if kind not in (*TASK_KINDS, "other"):
            raise ValueError(f"unknown task kind {kind!r}")
        gpu = {k.strip() for k in self.airflow_gpu_tasks.split(",") if k.strip()}
        route = {"queue": self.airflow_gpu_queue if kind in gpu else self.airflow_default_queue}
        return route | ({"pool": TASK_POOLS[kind]} if kind in TASK_POOLS else {})

    # --- derived values -----------------------------------------------------------------------------
    @property
    def uses_local_s3(self) -> bool:
        """True when no external S3 endpoint is configured and the embedded server is used."""
        return self.s3_endpoint is None

    @property
    def s3_address(self) -> str:
        """host:port the S3 client talks to."""
        return self.s3_endpoint or f"127.0.0.1:{self.local_s3_port}"

    @property
    def s3_url(self) -> str:
        return f"{'https' if self.s3_secure else 'http'}://{self.s3_address}"

    @property
    def buckets(self) -> dict[str, str]:
        """Bucket name for each role (datasets, models, campaigns, renders)."""
        return {role: getattr(self, f"bucket_{role}") for role in BUCKET_ROLES}

    @property
    def text_encoder_cache(self) -> Path | None:
        """Where the compiled text encoder is cached (None: compiling it is switched off)."""
        return self.local_dir / "cache" if self.compile_text_encoder else None

    @property
    def lineage_url(self) -> str:
        """The lineage database URL, the SQLite default resolved under local_dir."""
        if self.lineage_db_url is not None:
            return self.lineage_db_url.get_secret_value()
        return f"sqlite:///{(self.local_dir / 'lineage.db').resolve()}"

    def describe(self) -> dict[str, object]:
        """The resolved settings as plain values, secrets masked, derived values included."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["s3_url (derived)"] = self.s3_url
        out["uses_local_s3 (derived)"] = self.uses_local_s3
        out["lineage_url (derived)"] = _mask_url(self.lineage_url)
        return out


def _mask_url(url: str) -> str:
    """Hide the password of a database URL (``user:secret@host`` -> ``user:***@host``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def get_settings(**overrides: object) -> Settings:
    """Read the settings from the environment; keyword overrides win (used by tests and fixtures)."""
    return Settings(**overrides)
