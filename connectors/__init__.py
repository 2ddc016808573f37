"""Builders for the job's Kafka sources/sinks and the Redis writer."""
