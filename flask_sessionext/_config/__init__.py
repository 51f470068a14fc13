"""Configuration: ``SESSIONEXT_*`` keys and constructor options read and
checked once, in ``init_app``; error messages; passwords hidden from them.
"""
