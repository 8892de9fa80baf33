"""What several command modules share."""

CHECKS = ("size", "full")  # --check of run and verify
