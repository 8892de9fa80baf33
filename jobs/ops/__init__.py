"""Cluster operations: submit to a Ray cluster, Kubernetes manifests, nightly upkeep (publish, retention)."""
