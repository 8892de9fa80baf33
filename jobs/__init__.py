"""What a user submits: the job spec, the `latentmill` command line, local and Ray Jobs runs."""
