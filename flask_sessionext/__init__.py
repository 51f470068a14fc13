from ._extension import SessionExt
from .recording import QueryRecord

__all__ = ["QueryRecord", "SessionExt"]
