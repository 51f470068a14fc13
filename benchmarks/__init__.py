"""Benchmarks: this extension side by side with plain SQLAlchemy and peers."""
