"""Driftlog: a Kafka-compatible broker whose only durable storage is object storage."""

__version__ = "0.1.0"
