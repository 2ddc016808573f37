"""Windowed per-user features: sliding counts, sessions, RFM, affinity and engagement."""
