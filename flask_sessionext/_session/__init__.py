"""The session: its app-context scope, the per-app ``Session`` class and its
operations, bind routing, its life in an app context, tables per bind.
"""
