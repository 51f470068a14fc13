"""Features: each capability built on SQLAlchemy's events is one object
implementing :class:`~.base.Feature`; the app's runtime loops over them.
"""
