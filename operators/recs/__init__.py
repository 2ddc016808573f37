"""Recommendation candidates: co-visitation, category affinity, trending, reminders, business rules."""
