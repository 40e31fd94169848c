"""gen_engine: the campaign image factory's library.

Everything the Airflow DAGs do lives here, importable and testable without Airflow: configuration
(`config`), S3 access (`storage`), the lineage store (`lineage`), the embedded local services
(`services`) and the `genengine` command line (`cli`).
"""

__version__ = "0.1.0"
