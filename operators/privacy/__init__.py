"""Consent, erasure, PII protection and identity stitching (issue 7): pure logic, no pyflink.

The keyed user operator calls these the way it calls the other operators: load state, call, store,
emit. ``docs/privacy.md`` says what is wired into the job and what is not yet.
"""
