"""Declarative segment rules: a small condition language evaluated exactly in event time per user."""
