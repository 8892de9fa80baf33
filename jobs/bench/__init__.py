"""`latentmill bench ...`: benchmarks that print tables (recorded in docs/)."""
