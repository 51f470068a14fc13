"""Engines: created from the settings, their listeners, liveness of pooled
connections, SQLite transactions and fork safety.
"""
