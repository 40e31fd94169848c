"""Great Expectations suites kept as data (``suites/*.json``) and a runner over polars tables.

Suites are plain JSON: a name and a list of ``{"type": expectation, "kwargs": {...}}``, so data
engineers read and change them without Python. `SuiteRunner` validates tables in one in-memory GX
context and returns GX's own result documents, which the callers store beside their outputs. Given a
``docs_dir`` it also renders GX Data Docs there (a static HTML site: index, one page per validation
and per suite), which `upload_docs` copies to S3 beside the dataset version or its quarantine report.
`run_suite` is the one-table shortcut without Data Docs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

SUITES = Path(__file__).resolve().parent / "suites"
log = logging.getLogger(__name__)
# GX logs dozens of INFO lines of its own on import ("Skipping registering function ... because it is a
# closure") and per run; the factory logs each validation's outcome itself. GX's warnings and errors
# still show, and a deployment that sets the "great_expectations" logger's level keeps its choice.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def load_suite(name: str) -> dict[str, Any]:
    return json.loads((SUITES / f"{name}.json").read_text())


class SuiteRunner:
    """One in-memory GX context for several suites; with ``docs_dir`` one Data Docs site lists all their runs.

    The context is built from an explicit in-memory config, so GX creates no temporary docs folder of its own.
    """

    def __init__(self, docs_dir: Path | None = None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.docs_dir = docs_dir
        self._prepared: dict[str, tuple[Any, Any]] = {}  # suite -> (validation definition, checkpoint)
        self.ctx = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False)))
        if docs_dir is not None:
            self.ctx.add_data_docs_site("site", {
                "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}})

    def run(self, df: pl.DataFrame, suite_name: str,
            overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Validate ``df`` against a suite file; returns GX's result dict (``success``, ``statistics``, ...).

        ``overrides`` replaces kwargs per column (thresholds that live in the settings, e.g. the rejected
        fraction).
        """
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        spec = load_suite(suite_name)
        if suite_name not in self._prepared:  # a suite runs again on new batches (`ChunkedSuite`)
            batch_def = self.ctx.data_sources.add_pandas(suite_name).add_dataframe_asset("table") \
                .add_batch_definition_whole_dataframe("all")
            suite = gx.ExpectationSuite(name=spec["name"])
            for e in spec["expectations"]:
                kwargs = e["kwargs"] | (overrides or {}).get(e["kwargs"].get("column", ""), {})
                suite.add_expectation_configuration(ExpectationConfiguration(type=e["type"], kwargs=kwargs))
            suite = self.ctx.suites.add(suite)
            vd = self.ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{suite_name}-run", data=batch_def, suite=suite))
            checkpoint = None if self.docs_dir is None else self.ctx.checkpoints.add(gx.Checkpoint(
                name=f"{suite_name}-checkpoint", validation_definitions=[vd],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=["site"])]))
            self._prepared[suite_name] = (vd, checkpoint)
        vd, checkpoint = self._prepared[suite_name]
        batch = {"dataframe": df.to_pandas()}
        if checkpoint is None:
            result = vd.run(batch_parameters=batch).describe_dict()
        else:
            result = next(iter(checkpoint.run(batch_parameters=batch).run_results.values())).describe_dict()
        result["suite"] = spec["name"]
        if not result["success"]:
            failed = [e["expectation_type"] for e in result["expectations"] if not e["success"]]
            log.warning("suite %s failed on %d rows: %s", spec["name"], df.height, failed)
        return result


def run_suite(df: pl.DataFrame, suite_name: str,
              overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One suite, one table, no Data Docs (see `SuiteRunner`)."""
    return SuiteRunner().run(df, suite_name, overrides)


class ChunkedSuite:
    """One suite over a table too large to hold at once, validated a chunk at a time (`add`), so memory
    stays flat in the table's size. Every row meets every row-level expectation; a whole-column one
    (uniqueness) holds within each chunk, which is why the row rules that feed it check it over the
    whole file as well. `result` is the first failing chunk's result (or the last), with ``success``
    over all chunks, ``chunks`` and ``rows_validated``. With ``docs_dir``, one Data Docs site there lists
    every chunk's validation."""

    def __init__(self, suite_name: str, docs_dir: Path | None = None) -> None:
        self.suite_name = suite_name
        self.docs_dir = docs_dir
        self._runner: SuiteRunner | None = None
        self._results: list[dict[str, Any]] = []
        self.rows = 0

    def add(self, df: pl.DataFrame) -> None:
        if len(df) == 0:
            return
        self._runner = self._runner or SuiteRunner(self.docs_dir)
        self._results.append(self._runner.run(df, self.suite_name))
        self.rows += len(df)

    def result(self) -> dict[str, Any]:
        if not self._results:
            return {"success": True, "skipped": "no rows"}
        shown = next((r for r in self._results if not r["success"]), self._results[-1])
        return {**shown, "success": all(r["success"] for r in self._results), "chunks": len(self._results),
                "rows_validated": self.rows}


def upload_docs(store: Any, bucket: str, prefix: str, docs_dir: Path) -> str:
    """Copy a Data Docs site to ``s3://bucket/prefix`` (HTML, CSS, fonts, images); returns the index's URI."""
    import mimetypes

    for path in sorted(p for p in docs_dir.rglob("*") if p.is_file()):
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        store.put_file(bucket, prefix + path.relative_to(docs_dir).as_posix(), path, content_type=kind)
    return f"s3://{bucket}/{prefix}index.html"
