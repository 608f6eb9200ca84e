"""Metrics: one registry the components feed, and its HTTP endpoint."""
