"""What a user submits: the job spec, the `latentmill` command line, local runs, Ray Jobs submission,
Kubernetes manifests and nightly dated builds."""
