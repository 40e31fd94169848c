"""`genengine`: the factory's command line; every stage can be run by hand.

    genengine config                 # resolved settings, secrets masked
    genengine services up|down|status
    genengine --help                 # everything else

Commands are thin: they parse arguments, build the resources once (`gen_engine.resources`), call
gen_engine, and print its errors (`GenEngineError`: a bad input, a missing setup, S3 away) as one
readable line with a non-zero exit code. Anything else is a bug and keeps its traceback. Option
defaults that are tunables come from the settings (`genengine config` shows them).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from gen_engine.config import get_settings
from gen_engine.errors import GenEngineError, UserError
from gen_engine.resources import resources

app = typer.Typer(help="Campaign image factory: datasets -> GAN -> compiled engines -> rendered campaigns in S3.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
services_app = typer.Typer(help="The embedded local services (S3 server, Airflow home).", no_args_is_help=True)
app.add_typer(services_app, name="services")
dataset_app = typer.Typer(help="Datasets: build the starter artwork, synthesise, ingest, list.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
models_app = typer.Typer(help="Models: the shipped starter model, bootstrap of an empty registry.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print the project's own errors as one line (they already say what to do) and exit 1; a bug
    (any other exception) keeps its traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GenEngineError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also the libraries' INFO lines (Great "
                                                                     "Expectations, transformers, Airflow...) "
                                                                     "and our DEBUG lines.")) -> None:
    """Our own INFO lines by default, third-party libraries only from WARNING up (their INFO chatter buried
    ours); ``-v`` brings theirs back and adds our DEBUG lines."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)  # also where handlers existed
    logging.getLogger("gen_engine").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "Loading weights" bar per encoder load
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print the resolved settings (environment GEN_*, .env, defaults) with secrets masked.

    Example: genengine config --json
    """
    described = get_settings().describe()
    if as_json:
        typer.echo(json.dumps(described, indent=2, default=str))
        return
    table = Table("setting", "value", title="gen_engine settings (env prefix GEN_)")
    for k, v in described.items():
        table.add_row(k, "-" if v is None else str(v))
    console.print(table)


@services_app.command("up")
@friendly
def services_up(
    airflow: bool = typer.Option(True, help="Also prepare the Airflow home (DB, connection, pool)."),
) -> None:
    """Start the local S3 server (unless GEN_S3_ENDPOINT points elsewhere) and prepare Airflow.

    Example: genengine services up
    """
    from gen_engine.infra.services import LocalS3, init_airflow_home

    res = resources()
    s = res.settings
    buckets = list(s.buckets.values())
    if s.uses_local_s3:
        LocalS3.from_settings(s).start(buckets)
        console.print(f"local S3 up at {s.s3_url} (data in {s.local_dir / 's3'}), buckets: {', '.join(buckets)}")
    else:
        for b in buckets:
            res.storage.ensure_bucket(b)
        console.print(f"using external S3 at {s.s3_url}; buckets ensured: {', '.join(buckets)}")
    res.lineage  # noqa: B018 (opening it applies the schema)
    console.print(f"lineage store ready: {s.describe()['lineage_url (derived)']}")
    if airflow:
        home = init_airflow_home(s)
        console.print(f"Airflow home ready: {home} (connection {s.airflow_s3_conn_id}, pool gpu)")


@services_app.command("down")
@friendly
def services_down() -> None:
    """Stop the local S3 server started by `services up` (only that process).

    Example: genengine services down
    """
    from gen_engine.demo import stop_standalone
    from gen_engine.infra.services import LocalS3

    s = get_settings()
    if stop_standalone(s):
        console.print("airflow standalone stopped")
    stopped = LocalS3.handle(s).stop() if s.uses_local_s3 else False
    console.print("local S3 stopped" if stopped else "no local S3 server of ours was running")


@services_app.command("status")
@friendly
def services_status() -> None:
    """Say which local services run, and whether S3 answers (checked only where credentials are set).

    Example: genengine services status
    """
    from gen_engine.infra.services import local_status

    s = get_settings()
    for what, state in local_status(s):
        console.print(f"{what}: {state}")
    if s.s3_access_key is None or s.s3_secret_key is None:
        console.print(f"S3 at {s.s3_url}: not checked, no credentials (set AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY, or GEN_S3_ACCESS_KEY / GEN_S3_SECRET_KEY)")
        return
    resources().storage.check()
    console.print(f"S3 at {s.s3_url}: answering, credentials accepted")


@dataset_app.command("synth")
@friendly
def dataset_synth(
    out: Path = typer.Option(..., help="Folder to write (images/ + metadata.jsonl)."),
    n: int = typer.Option(1000, min=1, help="Number of images."),
    size: int = typer.Option(64, min=8, max=1024, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Same seed, same dataset."),
) -> None:
    """Write the synthetic captioned-shapes dataset in the imagefolder layout.

    Example: genengine dataset synth --out data/shapes --n 10000 --size 64 --seed 0
    """
    from gen_engine.datasets.synth import write_imagefolder

    meta = write_imagefolder(out, n, size, seed)
    console.print(f"wrote {n} images and {meta}")


@dataset_app.command("starter")
@friendly
def dataset_starter(
    out: Path = typer.Option(..., help="Folder to write (images/<set>/*.png, metadata.jsonl, card.json, LICENSES.md)."),
    size: int = typer.Option(256, min=32, max=1024, help="Side of the rendered masters in pixels."),
    sets: str = typer.Option("twemoji,openmoji", help="Artwork sets, comma-separated."),
    languages: str = typer.Option("en,zh", help="Caption languages (CLDR names), comma-separated."),
    skin_tones: bool = typer.Option(False, help="Also the skin-tone variants (~2,000 more people per set)."),
    limit: int | None = typer.Option(None, min=1, help="At most this many artworks per set (a slice)."),
) -> None:
    """Build the starter dataset: openly licensed emoji artwork with CLDR captions, offline.

    Example: genengine dataset starter --out data/starter
    """
    from gen_engine.datasets.starter import SETS, build

    chosen = tuple(x.strip() for x in sets.split(",") if x.strip())
    unknown = [x for x in chosen if x not in SETS]
    if unknown:
        raise UserError(f"unknown artwork set(s) {unknown}; choose from {sorted(SETS)}")
    card = build(out, size=size, sets=chosen, skin_tones=skin_tones,
                 languages=tuple(x.strip() for x in languages.split(",") if x.strip()), limit=limit)
    console.print(f"wrote {card['images']} images ({card['captions']} captions) to {out}; licences in "
                  f"{Path(out) / 'LICENSES.md'}")


@dataset_app.command("ingest")
@friendly
def dataset_ingest(
    source: str = typer.Argument(..., help="A zip, tar or folder, local or s3://bucket/key."),
    name: str = typer.Option(..., help="Dataset name (versions go to s3://datasets/curated/<name>/<version id>/)."),
    size: int = typer.Option(get_settings().ingest_image_size, help="Side of the stored training images "
                                                                    "(GEN_INGEST_IMAGE_SIZE)."),
) -> None:
    """Validate a drop (Great Expectations), quarantine bad records, publish a versioned curated dataset.

    Example: genengine dataset ingest data/drop.zip --name shapes
    """
    from dataclasses import replace

    from gen_engine.datasets.ingest import CurationConfig, DropRejected, ingest

    res = resources()
    try:
        r = ingest(source, name, res, replace(CurationConfig.from_settings(res.settings), size=size))
    except DropRejected as e:
        err_console.print(f"[bold red]drop rejected:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    what = "new version" if r.created else "already ingested, unchanged"
    console.print(f"{r.dataset} v{r.version} ({what}): {r.records_in} records in = {r.accepted} accepted + "
                  f"{r.rejected} rejected + {r.duplicates_merged} duplicates merged; {r.uri}")
    if r.rejected_by_reason:
        console.print(f"rejected by reason: {r.rejected_by_reason}")


@dataset_app.command("list")
@friendly
def dataset_list() -> None:
    """Datasets and their latest versions.

    Example: genengine dataset list
    """
    table = Table("dataset", "versions", "latest")
    for d in resources().lineage.datasets():
        table.add_row(d["name"], str(d["versions"]), f"v{d['latest']}" if d["latest"] else "-")
    console.print(table)


@dataset_app.command("show")
@friendly
def dataset_show(name: str, version: int | None = typer.Option(None, help="Default: the latest.")) -> None:
    """One version's card: counts, rejects by reason, histograms, location.

    Example: genengine dataset show starter --version 1
    """
    row = resources().lineage.dataset_version(name, version)
    if row is None:
        which = f"{name} v{version}" if version else name
        raise UserError(f"no dataset '{which}'; see `genengine dataset list`")
    typer.echo(json.dumps({k: v for k, v in row.items() if not k.endswith("_json")} |
                          {"card": json.loads(row["card_json"])}, indent=2))


@app.command()
@friendly
def train(
    config: Path = typer.Option(..., exists=True, dir_okay=False, help="Training config YAML (configs/*.yaml)."),
    data: str = typer.Option(..., help="A curated dataset (name or name@vN, from the lineage store) or a local "
                                       "imagefolder (metadata.jsonl + images)."),
    out: Path = typer.Option(..., help="Run folder; training resumes from its latest checkpoint."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    steps: int | None = typer.Option(None, help="Override the config's step count."),
    init_from: str | None = typer.Option(None, help="Override the config's init_from: none, production (or another "
                                                    "alias), a model id or a model folder."),
    publish: bool = typer.Option(False, help="Upload the model to S3 and register it in the lineage store."),
    alias: str | None = typer.Option(None, help="With --publish: point this alias (e.g. production) at it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train (or resume) a generator; writes checkpoints, sample grids, a loss curve and model/.

    Example: genengine train --config configs/demo.yaml --data starter --out runs/ft --init-from production --publish
    """
    from gen_engine.datasets.curated import TrainData
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.trainer import Trainer

    overrides: dict[str, Any] = {"steps": steps} if steps else {}
    if init_from is not None:
        overrides["init_from"] = init_from
    cfg = TrainConfig.from_yaml(config, **overrides)
    if dry_run:
        typer.echo(json.dumps(cfg.model_dump(), indent=2))
        return
    res = resources()
    if Path(data).is_dir():
        train_data = TrainData.from_imagefolder(Path(data), cfg.resolution, split="train",
                                                text_encoder=cfg.text_encoder)
    else:
        train_data = TrainData.from_curated(data, res, cfg.resolution, text_encoder=cfg.text_encoder)
    init, parent = res.registry.resolve_init(cfg.init_from)
    trainer = Trainer(cfg, train_data, out, device=device, init=init, parent=parent)
    trainer.resume()
    trainer.train()
    model_dir = trainer.export()
    console.print(f"model written to {model_dir}")
    if publish:
        row = res.registry.publish(model_dir, alias=alias, dataset_version_id=train_data.dataset_version_id)
        console.print(f"published {row['model_id']} (version {row['version']}) to {row['uri']}"
                      + (f", alias {alias}" if alias else ""))


@models_app.command("bootstrap")
@friendly
def models_bootstrap(
    compile_it: bool = typer.Option(True, "--compile/--no-compile", help="Also compile it (ONNX) as a promotion does."),
) -> None:
    """Publish the shipped starter model as production when the registry has none (else do nothing).

    Example: genengine models bootstrap
    """
    from gen_engine.bootstrap import bootstrap

    r = bootstrap(resources(), compile_it=compile_it)
    console.print(f"{r['reason']}; production = {r['model_id']} (version {r['version']})")


@models_app.command("text-encoders")
def models_text_encoders() -> None:
    """The text encoders a config can name (`text_encoder:`): package, whether it is installed, languages.

    Example: genengine models text-encoders
    """
    from rich.table import Table

    from gen_engine.text import DEFAULT_ENCODER, ENCODERS

    table = Table("name", "package", "installed", "dim", "languages", "licence")
    for s in ENCODERS.values():
        version = s.version()
        table.add_row(s.name + (" (default)" if s.name == DEFAULT_ENCODER else ""), s.package,
                      version or f"no: pip install {s.package}", str(s.dim), s.languages, s.licence)
    console.print(table)
    console.print("(default): what a training config that names no text_encoder uses, and the encoder of a "
                  "model that records none.")
    starter = get_settings().starter_model_dir / "model.json"
    if starter.exists():
        from gen_engine.text import model_encoder_name

        console.print(f"The shipped starter model reads prompts with "
                      f"{model_encoder_name(json.loads(starter.read_text()))}.")


@models_app.command("train-starter")
@friendly
def models_train_starter(
    out: Path = typer.Option(Path("starter/model"), help="Where the shipped model goes."),
    work: Path = typer.Option(Path(".local/starter"), help="Starter data and the training run (resumable)."),
    device: str = typer.Option("cpu", help="cpu (reproducible on one kind of machine) | cuda | auto"),
    steps: int | None = typer.Option(None, help="Override the recipe's step count (not for the shipped model)."),
) -> None:
    """Build the starter data and train the shipped starter model (configs/starter64.yaml, fixed steps).

    Example: genengine models train-starter
    """
    from gen_engine.bootstrap import train_starter

    console.print(f"starter model written to {train_starter(out, work, device=device, steps=steps)}")


@app.command()
@friendly
def evaluate(
    model: str = typer.Option("production", help="Alias, model id, or a local model folder."),
    data: str = typer.Option(..., help="Training data (curated name[@vN] or imagefolder); the encoder trains on it."),
    heldout: str | None = typer.Option(None, help="Held-out data; default: the curated version's val split."),
    out: Path | None = typer.Option(None, help="JSONL file the metrics are appended to; default: metrics.jsonl "
                                                "in the training run folder of a local model, else here."),
) -> None:
    """Frechet distance, R-precision, cosine (and colour/shape accuracy on synthetic shapes) on held-out data.

    Example: genengine evaluate --model runs/ft/model --data starter
    """
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import append_metrics, evaluate_model
    from gen_engine.orchestration import eval_cache

    res = resources()
    s = res.settings
    model_dir, row = res.registry.resolve(model)
    resolution = json.loads((model_dir / "model.json").read_text())["architecture"]["resolution"]

    def load(ref: str, split: str = "train") -> TrainData:
        if Path(ref).is_dir():
            return TrainData.from_imagefolder(Path(ref), resolution)
        return TrainData.from_curated(ref, res, resolution, split=split)

    train_data = load(data)
    held = load(heldout) if heldout else load(data, split="val")
    metrics = evaluate_model(model_dir, train_data, held, eval_cache(s), n=s.eval_images,
                             encoder_steps=s.eval_encoder_steps,
                             store=res.storage if train_data.curated_uri else None)
    if out is None:  # a trainer's export is <run>/model; the run folder holds config.json and the grids
        run_dir = model_dir.parent if (model_dir.parent / "config.json").exists() else None
        out = (run_dir or Path.cwd()) / "metrics.jsonl"
    steps = json.loads((model_dir / "model.json").read_text()).get("steps", 0)
    append_metrics(out, steps, {"model_id": row["model_id"], "data": data, **metrics})
    console.print(json.dumps(metrics, indent=1))
    console.print(f"appended to {out}")


@app.command()
@friendly
def sample(
    model: str = typer.Option("production", help="Alias, model id, or a local model folder."),
    prompt: str = typer.Option("", help="What to draw; empty: the model's own sample grid (its sample prompts, "
                               "seeds 0-5, as the models page shows it)."),
    seed: int = typer.Option(0, help="First seed; image i uses seed + i."),
    n: int = typer.Option(8, "-n", min=1, max=64, help="Number of images."),
    out: Path = typer.Option(Path("grid.png"), help="PNG grid to write."),
) -> None:
    """Render one prompt with n seeds into a PNG grid, or the model's sample grid.

    Example: genengine sample --model production --prompt "a red heart sticker" --seed 0 -n 8 --out grid.png
    Example: genengine sample --model starter/model --out starter/model/samples.png
    """
    import numpy as np

    from gen_engine.models.artifact import sample_grid
    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import load_backend
    from gen_engine.sheets import image_grid
    from gen_engine.text import encoder_for

    model_dir, _ = resources().registry.resolve(model)
    meta = json.loads((model_dir / "model.json").read_text())
    encoder = encoder_for(meta)
    backend = load_backend("auto", model_dir)
    if not prompt:
        prompts = meta.get("sample_prompts") or []
        if not prompts:
            raise UserError(f"{model} records no sample prompts: give --prompt")
        sample_grid(backend.render, backend.z_dim, prompts, encoder.name).save(out, optimize=True)
    else:
        z = np.stack([seed_noise(seed + i, backend.z_dim) for i in range(n)])
        imgs = backend.render(z, np.repeat(encoder.encode([prompt]), n, axis=0))
        image_grid(imgs, cols=min(n, 8), labels=[prompt]).save(out)
    console.print(f"wrote {out}")


@app.command("compile")
@friendly
def compile_cmd(model: str = typer.Option("production", help="Alias or model id to compile."),
                precision: str | None = typer.Option(None, help="fp32 | int8 (a gated int8 CPU engine beside the "
                                                           "fp32 one); default: the model's recipe "
                                                           "(compile.precision).")) -> None:
    """Export the generator to ONNX (parity-checked), build TensorRT where present, publish beside the model.

    Example: genengine compile --model production --precision int8
    """
    from gen_engine.orchestration import compile_and_register

    res = resources()
    model_dir, row = res.registry.resolve(model)
    report, engines = compile_and_register(res, model_dir, row, precision)
    p = report["onnx"]["parity"]
    console.print(f"compiled {row['model_id']}: ONNX {report['onnx']['bytes'] / 1e6:.1f} MB, parity max abs error "
                  f"{p['max_abs_error']:.1e} on {p['pairs']} pairs; engines: {', '.join(engines)}; "
                  f"TensorRT: {report['tensorrt'].get('reason', 'built')}")
    if q := report.get("int8"):
        speed = q["images_per_second_batch32"]
        console.print(f"int8 engine {'kept' if q['accepted'] else 'refused'}: mean PSNR {q['psnr_db_mean']:.1f} dB "
                      f"against fp32 (bound {q['psnr_db_bound']:g}), FD {q.get('fd_int8', 'n/a')} against fp32's "
                      f"{q.get('fd_fp32', 'n/a')}, {speed['speedup']:.2f}x fp32's images/s here; {q['reason']}")
    if up := report.get("upsampler"):
        console.print(f"upsampler: {'ONNX ' + up['file'] if up.get('file') else 'torch only'}, parity max abs error "
                      f"{up['parity']['max_abs_error']:.1e}")


@app.command()
@friendly
def render(
    source: str = typer.Argument(..., help="Prompt CSV: a local file or s3://bucket/key."),
    campaign: str | None = typer.Option(None, help="Campaign name (part of every object key; default: the "
                                                    "CSV's file name)."),
    backend: str = typer.Option("auto", help="auto | torch | onnxruntime | tensorrt"),
    shard_size: int = typer.Option(get_settings().render_shard_size, min=1,
                                   help="Images per shard (GEN_RENDER_SHARD_SIZE)."),
    model: str = typer.Option("production", help="Alias, model id, or a local model folder."),
    label: str = typer.Option("", help="Visible AI label of rows that name none in a `label` column: none, corner "
                                       "or edge (default: GEN_RENDER_LABEL)."),
) -> None:
    """Render a prompt CSV into s3://renders/<campaign>/<run>/: the campaign_render DAG's steps in one
    process (a CSV in incoming/ is claimed and filed; any other source is read where it is).

    Example: genengine render s3://campaigns/incoming/spring_sale.csv --label corner
    """
    from gen_engine.orchestration import run_campaign

    res = resources()
    summary = run_campaign(res, source, campaign, model=model, backend=backend, shard_size=shard_size, label=label)
    c = summary["counts"]
    console.print(f"{c['rows_read']} rows read = {c['rows_accepted']} accepted + {c['rows_rejected']} rejected + "
                  f"{c['rows_blank']} blank; {c['images']} images "
                  f"({summary['images_rendered_now']} rendered now, {summary['throughput_images_per_s']:.1f} img/s)")
    console.print(f"outputs: s3://{res.settings.bucket_renders}/{summary['prefix']} (index.html, manifest.csv, "
                  "rejected.csv, contact_sheet.png)")
    for line in summary["skipped"]:
        console.print(f"skipped: {line}")


@app.command("lineage")
@friendly
def lineage_cmd(
    target: str = typer.Argument(..., help="An image's object key, s3:// URL, or a local image file."),
) -> None:
    """Trace an image: run -> CSV -> row -> prompt/seed -> model -> dataset -> training config -> code.

    Example: genengine lineage renders/spring_sale/<run>/images/hero-red-heart_0.png
    """
    from gen_engine.render.imagemeta import read_provenance

    res = resources()
    s = res.settings
    key = target.removeprefix("s3://").removeprefix(f"{s.bucket_renders}/")
    trace = None
    if not Path(target).is_file():
        try:
            trace = res.lineage.trace(key)
        except Exception as e:  # database unreachable: say so, fall back to the file
            err_console.print(f"lineage database unreachable ({type(e).__name__}); reading the image's own metadata")
    if trace is None:
        local = Path(target).is_file()
        data = Path(target).read_bytes() if local else res.storage.get_bytes(s.bucket_renders, key)
        trace = {"source": "embedded image metadata", **read_provenance(data)}
    else:
        trace = {"source": "lineage store", **trace}
    typer.echo(json.dumps(trace, indent=2, default=str, ensure_ascii=False))


@app.command("train-upsampler")
@friendly
def train_upsampler_cmd(
    data: str = typer.Option(..., help="A curated dataset (name or name@vN) with masters, or an imagefolder."),
    model: Path = typer.Option(..., exists=True, file_okay=False, help="The generator's model folder: the "
                                                                        "upsampler is written beside it."),
    steps: int = typer.Option(3000, min=1, help="Training steps (batch 16 of 128 px crops)."),
    budget_min: float | None = typer.Option(None, help="Stop after this many minutes, whatever the steps."),
) -> None:
    """Train the x4 upsampler that serves sizes above the generator's native resolution, on the dataset's
    256 px masters (held-out masters excluded), and write it into the model folder with its scores.

    Example: genengine train-upsampler --data starter --model runs/starter/model && genengine compile --model
    runs/starter/model
    """
    from dataclasses import replace

    from gen_engine.training.upsampler import Masters, UpsamplerTrainConfig, train_into

    masters = Masters.from_folder(Path(data)) if Path(data).is_dir() else Masters.from_curated(data, resources())
    scores = train_into(model, masters, replace(UpsamplerTrainConfig(), steps=steps), progress=True,
                        time_budget_s=budget_min * 60 if budget_min else None, dataset=data)
    console.print(f"upsampler written to {model}: held-out PSNR {scores['psnr_upsampler']:.2f} dB against "
                  f"Lanczos {scores['psnr_lanczos']:.2f} dB ({scores['psnr_gain_db']:+.2f} dB), SSIM "
                  f"{scores['ssim_upsampler']:.3f} / {scores['ssim_lanczos']:.3f}")


@app.command()
@friendly
def verify(
    target: str = typer.Argument(..., help="An image: a local file, s3://bucket/key, or a key in the renders bucket."),
    trust: Path | None = typer.Option(None, help="PEM root certificates to require the signer to chain to "
                                                 "(default: GEN_C2PA_TRUST_ANCHORS; none: any valid signature)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Check an image's provenance: the C2PA manifest (signature, hashes, signer), the IPTC digital source
    type, the GB 45438 AIGC label, the visible label and the embedded lineage.

    Exit status: 0 all claims hold; 1 a claim does not (a manifest that fails validation or is missing
    where the lineage says it was signed, a broken AIGC label, an untrusted signer with --trust);
    2 the file claims no provenance at all.

    Example: genengine verify s3://renders/spring/0123abcd/images/hero_0.png
    """
    from gen_engine.render import provenance

    settings = get_settings()
    storage = None
    if not Path(target).is_file():
        storage = resources().storage
    data = provenance.read_source(target, settings, storage)
    anchors = trust.read_bytes() if trust else provenance.pem_text(settings.c2pa_trust_anchors)
    v = provenance.verify(data, target, anchors)
    if as_json:
        typer.echo(json.dumps(v.as_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        say = functools.partial(console.print, markup=False, highlight=False)  # file text is data, not markup
        c = v.c2pa
        if c.get("present"):
            who = c["signer"].get("common_name") or "?"
            dev = " (DEVELOPMENT chain: not for publication)" if c.get("development_chain") else ""
            say(f"C2PA: {c['state']}, signed by {who}{dev}; "
                f"{'trusted' if c.get('trusted') else 'signer not on a trust list'}")
        else:
            say("C2PA: no manifest")
        say(f"IPTC digital source type: {v.digital_source_type or 'none'}")
        say(f"AIGC label (GB 45438): {json.dumps(v.aigc, ensure_ascii=False) if v.aigc else 'none'}")
        say(f"visible label: {v.visible_label or 'unknown'}")
        if v.lineage:
            say(f"lineage: run {v.lineage.get('run_id')}, image {v.lineage.get('image_id')}, "
                f"model {v.lineage.get('model_id')}")
        for p in v.problems:
            err_console.print(f"problem: {p}", markup=False, highlight=False, style="red")
        console.print("[green]ok[/green]" if v.ok else "[red]NOT OK[/red]" if v.claims_provenance
                      else "[yellow]no provenance claimed[/yellow]")
    raise typer.Exit(0 if v.ok else 1 if v.claims_provenance else 2)


@app.command()
@friendly
def demo() -> None:
    """Synthetic dataset -> demo training -> publish -> the example campaign rendered into S3.

    Example: genengine demo   (or: make demo)
    """
    from gen_engine.demo import run_demo

    run_demo(console)


if __name__ == "__main__":
    app()
