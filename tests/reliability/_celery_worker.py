"""The module that the Celery worker loads (``-A``): the Flask app, created
and connected in the worker's parent process, before its pool forks.
"""

from __future__ import annotations

import os

from ._prefork_apps import CELERY_DIR_ENV, create_app, create_celery

flask_app = create_app()
celery = create_celery(os.environ[CELERY_DIR_ENV], flask_app)
