"""Quantities: what the monitor measures from a training step (pure functions of numpy payloads)."""
