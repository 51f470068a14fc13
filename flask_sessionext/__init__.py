from ._extension import SessionExt
from ._features.outbox import CommittedChange
from .recording import QueryRecord

__all__ = ["CommittedChange", "QueryRecord", "SessionExt"]
