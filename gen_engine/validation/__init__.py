"""Great Expectations suites kept as data (``suites/*.json``) and a runner over polars tables.

Suites are plain JSON: a name and a list of ``{"type": expectation, "kwargs": {...}}``, so data
engineers read and change them without Python. `run_suite` validates a table in an ephemeral GX
context (nothing is written to disk) and returns GX's own result document, which the callers store
beside their outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

SUITES = Path(__file__).resolve().parent / "suites"
log = logging.getLogger(__name__)


def load_suite(name: str) -> dict[str, Any]:
    return json.loads((SUITES / f"{name}.json").read_text())


def run_suite(df: pl.DataFrame, suite_name: str,
              overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Validate ``df`` against a suite file; returns GX's result dict (``success``, ``statistics``, ...).

    ``overrides`` replaces kwargs per column (thresholds that live in the settings, e.g. the rejected fraction).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    spec = load_suite(suite_name)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_def = ctx.data_sources.add_pandas(suite_name).add_dataframe_asset("table") \
        .add_batch_definition_whole_dataframe("all")
    suite = gx.ExpectationSuite(name=spec["name"])
    for e in spec["expectations"]:
        kwargs = e["kwargs"] | (overrides or {}).get(e["kwargs"].get("column", ""), {})
        suite.add_expectation_configuration(ExpectationConfiguration(type=e["type"], kwargs=kwargs))
    suite = ctx.suites.add(suite)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{suite_name}-run", data=batch_def, suite=suite))
    result = vd.run(batch_parameters={"dataframe": df.to_pandas()}).describe_dict()
    result["suite"] = spec["name"]
    if not result["success"]:
        failed = [e["expectation_type"] for e in result["expectations"] if not e["success"]]
        log.warning("suite %s failed on %d rows: %s", spec["name"], df.height, failed)
    return result
