"""Dataset ingest throughput and memory: a 64 px imagefolder drop from S3 to a curated version.

    python benchmarks/ingest_throughput.py            # 2,000 and 10,000 images, the issue's figures
    python benchmarks/ingest_throughput.py --quick    # 500 and 2,000 images, for a smoke run

Everything runs against a real local SeaweedFS started here on free ports. Each drop is a zip of
synthetic 64 px shapes with ``metadata.jsonl`` uploaded to ``datasets/raw/``; the ingest runs in a
fresh child process (so its peak RSS is its own) exactly as ``genengine dataset ingest s3://...``
does: download, every record check, both Great Expectations suites with Data Docs, MiniLM embeddings,
parquet shards, card, sample grid, lineage. Records/s counts that whole wall time, model loading
included. Writes JSON and a markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def child_ingest(source: str, name: str) -> dict:
    from gen_engine.datasets.ingest import CurationConfig, ingest
    from gen_engine.resources import resources

    t0 = time.perf_counter()
    r = ingest(source, name, resources(), CurationConfig(size=64))
    wall = time.perf_counter() - t0
    return {"records_in": r.records_in, "accepted": r.accepted, "rejected": r.rejected, "wall_s": wall,
            "records_per_s": r.records_in / wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "uri": r.uri}


def run_child(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"ingest child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_drop(work: Path, n: int) -> Path:
    """A zip in the imagefolder layout: images/*.png + metadata.jsonl (64 px synthetic shapes)."""
    from gen_engine.datasets.synth import write_imagefolder

    folder = work / f"folder{n}"
    write_imagefolder(folder, n, 64, seed=n, progress=False)
    path = work / f"drop{n}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="500 and 2,000 images instead of 2,000 and 10,000.")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_ingest(*a.child)))
        return

    from gen_engine.infra.services import LocalS3, S3Ports

    sizes = (500, 2000) if a.quick else (2000, 10000)
    out: dict = {"machine": {"cpus": os.cpu_count()}, "image_size": 64, "runs": {}}
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        server = LocalS3(tdp / "s3", S3Ports.free(), "bench-" + secrets.token_hex(3), secrets.token_hex(12))
        server.start(["datasets"])
        env = os.environ | {"GEN_S3_ENDPOINT": server.endpoint, "GEN_S3_ACCESS_KEY": server._access_key,
                            "GEN_S3_SECRET_KEY": server._secret_key, "GEN_LOCAL_DIR": str(tdp / "local")}
        try:
            store = server.storage()
            for n in sizes:
                print(f"drop of {n:,} images ...", flush=True)
                drop = make_drop(tdp, n)
                store.put_file("datasets", f"raw/bench{n}/drop.zip", drop, content_type="application/zip")
                r = run_child(env, f"s3://datasets/raw/bench{n}/drop.zip", f"bench{n}")
                r["drop_mb"] = drop.stat().st_size / 2**20
                out["runs"][str(n)] = r
                print(f"  {r['records_per_s']:.0f} records/s ({r['wall_s']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB",
                      flush=True)
        finally:
            server.stop()

    RESULTS.mkdir(exist_ok=True)
    name = "ingest_throughput" + ("_quick" if a.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    small, big = (out["runs"][str(n)] for n in sizes)
    md = [f"# Dataset ingest (64 px imagefolder zip from S3, {os.cpu_count()} CPUs)", "",
          "| drop | records/s | wall (s) | peak RSS (MB) | target |", "|---|---|---|---|---|",
          *[f"| {n:,} images ({r['drop_mb']:.0f} MB zip) | {r['records_per_s']:.0f} | {r['wall_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | >= 200 records/s, RSS < 1,500 |" for n, r in zip(sizes, (small, big),
                                                                                       strict=True)],
          "", f"Peak RSS {big['peak_rss_mb']:.0f} MB at {sizes[1]:,} images vs {small['peak_rss_mb']:.0f} MB at "
          f"{sizes[0]:,} ({big['peak_rss_mb'] / small['peak_rss_mb'] - 1:+.1%}).", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
