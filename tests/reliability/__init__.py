"""Reliability: concurrency, faults, receiver errors, bad input and secrets,
on PostgreSQL behind a real multi-threaded WSGI server.
"""

import pytest

# The checks shared by several test modules explain their failures too.
pytest.register_assert_rewrite("reliability._webapp")
