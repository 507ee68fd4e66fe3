"""Adapters: other training loops -> the hook protocol (PyTorch)."""
