"""Experiments (docs/experiments.md): arms, deterministic assignment, exposure and conversion attribution in
event time, and per-arm statistics. Pure: the Flink shell calls these per user and per metrics window."""
