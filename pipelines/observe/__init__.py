"""What a run leaves to watch: the facts it records (accounting), and their readers: live progress,
run and job reports, charts, Ray metrics, the quality monitor summary."""
