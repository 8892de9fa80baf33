"""Sinks: sharded webdataset output with Parquet manifests, commit markers and an index."""
