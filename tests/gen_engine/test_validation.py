"""The GX suites are real: they pass on good tables and fail, naming the expectation, on bad ones."""

from __future__ import annotations

import polars as pl

from gen_engine.validation import load_suite, run_suite

GOOD = {"prompt_chars": [12, 40], "seed": [1, None], "count": [1, 16], "asset": ["hero", "promo.v2"],
        "format": ["png", "jpeg"], "variety": [1.0, 0.5]}


def test_prompt_suite_passes_on_a_good_table() -> None:
    res = run_suite(pl.DataFrame(GOOD, schema_overrides={"seed": pl.Int64}), "prompt_csv")
    n_expectations = len(load_suite("prompt_csv")["expectations"])
    assert res["success"] and res["statistics"]["evaluated_expectations"] == n_expectations


def test_prompt_suite_fails_on_a_bad_table() -> None:
    bad = GOOD | {"asset": ["hero", "hero"], "count": [1, 99], "format": ["png", "gif"]}
    res = run_suite(pl.DataFrame(bad, schema_overrides={"seed": pl.Int64}), "prompt_csv")
    failed = {(e["expectation_type"], e["kwargs"].get("column")) for e in res["expectations"] if not e["success"]}
    assert not res["success"]
    assert failed == {("expect_column_values_to_be_unique", "asset"), ("expect_column_values_to_be_between", "count"),
                      ("expect_column_values_to_be_in_set", "format")}


def test_great_expectations_does_not_flood_the_log_at_info() -> None:
    """`genengine dataset ingest` logs at INFO: GX's own INFO chatter (dozens of lines on import) stays out."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "import polars as pl\nfrom gen_engine.validation import run_suite\n"
            "print(run_suite(pl.DataFrame({'accepted_records': [5], 'rejected_fraction': [0.0]}), 'dataset_drop')"
            "['success'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert "great_expectations" not in out.stderr, out.stderr[:500]


def test_a_suite_over_chunks_checks_every_row_and_fails_on_a_later_chunk() -> None:
    """`ChunkedSuite` (a big CSV's light columns, 50,000 rows at a time): memory per chunk, every row seen."""
    import polars as pl

    from gen_engine.validation import ChunkedSuite

    def frame(n: int, count: int) -> pl.DataFrame:
        return pl.DataFrame({"prompt_chars": [10] * n, "seed": [1] * n, "count": [count] * n,
                             "asset": [f"a{count}-{i}" for i in range(n)], "format": ["png"] * n,
                             "variety": [1.0] * n})

    suite = ChunkedSuite("prompt_csv")
    suite.add(frame(5, 2))
    suite.add(frame(0, 2))  # an empty chunk is no chunk
    assert suite.result()["success"] and suite.result()["chunks"] == 1
    suite.add(frame(3, 99))  # count 99 is out of the suite's range: only the second chunk has it
    out = suite.result()
    assert not out["success"] and out["chunks"] == 2 and out["rows_validated"] == 8
