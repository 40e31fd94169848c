"""`make demo`: the main job end to end on the embedded defaults (local S3, SQLite).

1. a synthetic captioned-shapes dataset (made once, under .local/demo/);
2. a short CPU training run (configs/demo.yaml), published to S3 and aliased `production`
   (resumed, not redone, when it already finished);
3. examples/campaigns/spring_sale.csv dropped into s3://campaigns/incoming/, claimed, rendered into
   s3://renders/<campaign>/<run>/, and moved to processed/;
4. the gallery copied to ./out/<campaign>/ and the locations printed.

A second `make demo` reuses the dataset, the model and the rendered images (same CSV checksum).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from gen_engine.config import get_settings

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN_CSV = REPO / "examples" / "campaigns" / "spring_sale.csv"


def run_demo(console: Console) -> dict:
    from gen_engine import registry
    from gen_engine.datasets.synth import write_imagefolder
    from gen_engine.lineage import LineageStore
    from gen_engine.render.campaign import run_campaign
    from gen_engine.storage import Storage
    from gen_engine.training.loop import TrainConfig, TrainData, Trainer

    t0 = time.monotonic()
    s = get_settings()
    store, lineage = Storage.from_settings(s), LineageStore.from_settings(s)
    work = s.local_dir / "demo"

    console.rule("1/4 dataset")
    data_dir = work / "shapes32"
    if not (data_dir / "metadata.jsonl").exists():
        write_imagefolder(data_dir, n=2000, size=32, seed=0)
    console.print(f"synthetic shapes: {data_dir}")

    console.rule("2/4 training")
    cfg = TrainConfig.from_yaml(REPO / "configs" / "demo.yaml")
    trainer = Trainer(cfg, TrainData.from_imagefolder(data_dir, cfg.resolution), work / "run-demo")
    trainer.resume()
    trainer.train()
    model_dir = trainer.export()
    row = registry.publish(model_dir, s, store, lineage, alias="production")
    console.print(f"model {row['model_id']} (version {row['version']}) is production; samples and loss curve in "
                  f"{trainer.run_dir}")

    console.rule("3/4 campaign")
    campaigns = s.bucket_campaigns
    name = CAMPAIGN_CSV.stem
    store.put_file(campaigns, f"incoming/{name}.csv", CAMPAIGN_CSV, content_type="text/csv")
    if not store.claim(campaigns, f"incoming/{name}.csv", f"claimed/{name}.csv"):
        raise RuntimeError("could not claim the demo CSV (another process took it?)")
    summary = run_campaign(f"s3://{campaigns}/claimed/{name}.csv", name, s)
    store.copy(campaigns, f"claimed/{name}.csv", f"processed/{name}.csv")
    store.delete(campaigns, f"claimed/{name}.csv")

    console.rule("4/4 results")
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
    console.print(f"CSV:      s3://{campaigns}/processed/{name}.csv")
    console.print(f"gallery:  {out / 'index.html'}")
    console.print(f"lineage:  genengine lineage {s.bucket_renders}/{prefix}images/hero-red-circle_0.png")
    console.print(f"done in {time.monotonic() - t0:.0f}s")
    return summary
