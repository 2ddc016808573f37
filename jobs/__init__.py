"""Job entry points, the pipeline builder and the thin Flink adapters around ``operators``."""
