"""Keyed-state descriptors, TTLs and the versioned codecs of state objects."""
