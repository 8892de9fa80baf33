"""The engine: plans and sources -> a chain of stage pools -> sharded sink, with accounting (ARCHITECTURE.md)."""
