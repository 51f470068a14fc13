"""Values and URLs shown in messages, with their passwords hidden."""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import URL

#: The ``user:password@`` part of a URL that SQLAlchemy could not parse.
_USERINFO_RE = re.compile(r"^((?:[^:/@]*://)?).*@")
#: The password of a URL quoted in some text, e.g. in an error of SQLAlchemy.
_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
#: Option names whose values may hold secrets: messages show their type only.
_SECRET_RE = re.compile(r"pass|secret|token|key|credential|connect_args|creator", re.I)


def is_secret(name: str) -> bool:
    """Whether the value of an option or key called ``name`` may hold a secret."""
    return _SECRET_RE.search(name) is not None


def mask_url(url: str | URL) -> str:
    """Render ``url`` for a message, with its password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # Unparsable: hide everything that might be user info.
        return _USERINFO_RE.sub(r"\1***@", url, count=1)


def describe(value: object, *, secret: bool = False) -> str:
    """``value`` for a message: its type and a short repr, in which anything
    like user info of a URL, and the values of secret-looking keys, are hidden.
    """
    kind = type(value).__name__
    if secret:
        return f"a {kind} (hidden)"
    if isinstance(value, str):
        text = _USERINFO_RE.sub(r"\1***@", value, count=1)
        return f"{kind} {text if len(text) <= 60 else text[:57] + '...'!r}"
    if isinstance(value, Mapping):
        value = {
            k: "***" if isinstance(k, str) and is_secret(k) else v
            for k, v in value.items()
        }
    text = reprlib.repr(value)
    if "@" in text:
        return f"a {kind}"  # it may hold a URL with a password
    return f"{kind} {text}"


def quote(value: object) -> str:
    """``repr(value)`` with the password of any URL in it hidden."""
    return hide_passwords(repr(value))


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD_RE.sub(r"\1***@", text)


def cause(error: BaseException, password: str | None = None) -> BaseException | None:
    """``error``, to chain a new error to; ``None`` when it, or an exception
    it chains to, may quote ``password`` or the password of any URL.
    """
    seen: BaseException | None = error
    while seen is not None:
        text = f"{seen} {seen.args!r}"
        if (password and password in text) or _PASSWORD_RE.search(text):
            return None
        seen = seen.__cause__ or seen.__context__
    return error
