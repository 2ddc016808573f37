"""Real-time personalization engine on Apache Flink (PyFlink)."""

__version__ = "0.1.0"
