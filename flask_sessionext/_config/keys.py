"""The names of the ``SESSIONEXT_*`` config keys, and the check that refuses a
key the extension would ignore: a misspelt ``SESSIONEXT_*`` key, or a
Flask-SQLAlchemy key whose ``SESSIONEXT_*`` counterpart is unset.

:data:`KEYS` is the one list of the keys the extension reads; the tests check
that it names exactly the ``SESSIONEXT_*`` strings of the package's source,
and the ``.. data::`` entries of the documentation's configuration page.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

#: Every key the extension reads, in the order of the configuration page.
KEYS: tuple[str, ...] = (
    "SESSIONEXT_DATABASE_URI",
    "SESSIONEXT_ASYNC_DATABASE_URI",
    "SESSIONEXT_BINDS",
    "SESSIONEXT_ENGINE_OPTIONS",
    "SESSIONEXT_PING_AFTER_IDLE",
    "SESSIONEXT_SESSION_OPTIONS",
    "SESSIONEXT_ECHO",
    "SESSIONEXT_SYNCHRONIZE_SESSION",
    "SESSIONEXT_COMMIT_ON_TEARDOWN",
    "SESSIONEXT_RECORD_QUERIES",
    "SESSIONEXT_RECORD_QUERIES_LIMIT",
    "SESSIONEXT_RECORD_PARAMETERS",
    "SESSIONEXT_SLOW_QUERY_THRESHOLD",
    "SESSIONEXT_SERVER_TIMING",
    "SESSIONEXT_BROADCAST",
    "SESSIONEXT_RAISE_RECEIVER_ERRORS",
)

PREFIX = "SESSIONEXT_"

#: Flask-SQLAlchemy's keys that would otherwise be left behind silently in
#: an app that moves to this extension, and the key that replaces each.
RENAMED: Mapping[str, str] = {
    "SQLALCHEMY_DATABASE_URI": "SESSIONEXT_DATABASE_URI",
    "SQLALCHEMY_BINDS": "SESSIONEXT_BINDS",
    "SQLALCHEMY_ENGINE_OPTIONS": "SESSIONEXT_ENGINE_OPTIONS",
}

#: How alike an unknown key and a known one must be (``difflib``'s ratio)
#: for the message to suggest the known one; as for misspelt signal names.
_TYPO_RATIO = 0.85


def check_keys(config: Mapping[str, object]) -> None:
    """Refuse a config key that the extension would ignore while the app
    falls back to a default, such as the embedded SQLite database.

    :raise ValueError: a ``SESSIONEXT_*`` key is not one of :data:`KEYS`
        (the message names the closest known key); or a key of
        :data:`RENAMED` is set and its ``SESSIONEXT_*`` counterpart is not.
    """
    for key in config:
        if not isinstance(key, str) or not key.startswith(PREFIX) or key in KEYS:
            continue
        close = difflib.get_close_matches(key, KEYS, n=1, cutoff=_TYPO_RATIO)
        if close:
            hint = f" Did you mean '{close[0]}'?"
        else:
            hint = f" The keys are {', '.join(map(repr, KEYS))}."
        raise ValueError(
            f"'{key}' is not a Flask-SessionExt config key, and would be ignored.{hint}"
        )
    for old, new in RENAMED.items():
        if old in config and new not in config:
            raise ValueError(
                f"'{old}' is set but '{new}' is not: Flask-SessionExt reads"
                f" '{new}', and without it would use its default. Rename"
                f" '{old}' to '{new}'."
            )
