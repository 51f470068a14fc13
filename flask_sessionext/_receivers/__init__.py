"""Receivers: the one place that calls user code (receivers of every signal,
``on_commit`` callbacks), its error policy, the checks made when a receiver
connects, and ``db.register()``.
"""
