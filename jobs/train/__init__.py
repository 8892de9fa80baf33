"""kind: train-decoder: Ray Train driver and worker, data, checkpoint format, spec and report."""
