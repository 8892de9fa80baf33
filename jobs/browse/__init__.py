"""`latentmill browse`: a local web page over a job output (local path or S3), and its static export.

catalog.py answers queries from the Parquet manifests (never opening a tar); media.py reads one
sample's files by range and makes thumbnails; pages.py renders HTML from templates/; server.py
serves it all with the standard library; export.py writes the same pages as static files.
"""
