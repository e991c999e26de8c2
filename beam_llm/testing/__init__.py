"""Helpers for testing beam-llm pipelines offline (no model downloads)."""
