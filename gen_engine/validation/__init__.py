"""Data validation with Great Expectations: the suites are JSON under ``suites/``, the runner is `runner`."""

from gen_engine.validation.runner import ChunkedSuite, SuiteRunner, load_suite, run_suite, upload_docs

__all__ = ["ChunkedSuite", "SuiteRunner", "load_suite", "run_suite", "upload_docs"]
