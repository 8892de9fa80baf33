"""Stages: small callable classes that load their model once and process one batch per call."""
