"""Infrastructure: the S3 object store, the lineage database and the local services (embedded S3, Airflow).

Everything above this package reaches them through `gen_engine.resources.Resources`, built once per
process; nothing here imports the factory's domain packages.
"""
