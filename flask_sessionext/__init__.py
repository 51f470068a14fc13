from ._extension import SessionExt

__all__ = ["SessionExt"]
