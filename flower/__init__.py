"""Flower integration (placeholder while it is written)."""
