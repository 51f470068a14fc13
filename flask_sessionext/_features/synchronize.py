"""``SESSIONEXT_SYNCHRONIZE_SESSION`` on SQLAlchemy 2.0.

On SQLAlchemy 2.1 the settings put the default ``synchronize_session`` in
the Session's own execution options, and this feature is not wanted; on 2.0
it sets it on each ORM-enabled UPDATE and DELETE in a ``do_orm_execute``
handler.
"""

from __future__ import annotations

import typing as t

from sqlalchemy import orm

from .._config import settings as _settings
from .base import Feature

if t.TYPE_CHECKING:
    from flask import Flask

    from .._config.settings import Settings


class SynchronizeSession(Feature):
    """The default ``synchronize_session`` of one app's ORM statements."""

    name = "synchronize_session"
    listens = ("do_orm_execute",)

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether the setting is on and needs a listener to apply."""
        return (
            settings.synchronize_session is not None
            and not _settings.SESSION_EXECUTION_OPTIONS
        )

    def start(self, app: Flask) -> None:
        """Set the default on the statements of the app's sessions."""
        synchronize = self.parts.settings.synchronize_session

        def handler(state: orm.ORMExecuteState) -> None:
            if (state.is_update or state.is_delete) and (
                "synchronize_session" not in state.execution_options
            ):
                state.update_execution_options(synchronize_session=synchronize)

        self.listen(self.parts.session_class, "do_orm_execute", handler)
