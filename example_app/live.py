"""The live board: ``models_committed_anywhere`` pushed to browsers.

Run two instances of the app on one database (two ports, see the README):
a change made through one reaches the other's listener (at once on
PostgreSQL, within half a second on SQLite, which polls), whose receiver
wakes the browsers connected to it by Server-Sent Events; the board then
reloads, and the *Live* page lists what this instance received.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import typing as t

from flask import Blueprint, Flask, Response, current_app, render_template, request

from flask_sessionext import CommittedChange
from flask_sessionext.signals import models_committed_anywhere, publications_lost

bp = Blueprint("live", __name__)

#: How long one event stream lasts; the browser reconnects by itself.
STREAM_SECONDS = 300.0
#: The longest silence of a stream: a comment keeps proxies from closing it.
KEEP_ALIVE = 15.0


class Feed:
    """What this process received, for its page and its event streams."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        #: The latest publications, newest last.
        self.events: collections.deque[dict[str, t.Any]] = collections.deque(maxlen=20)
        #: How many publications this process received.
        self.count = 0
        self.listening = False

    def received(
        self,
        app: Flask,
        changes: list[CommittedChange],
        local: bool,
        sequence: int,
    ) -> None:
        """Keep a publication and wake the event streams."""
        self._push(sequence, local, [_summary(change) for change in changes])

    def lost(self, app: Flask, reason: str) -> None:
        """Publications this process should have received are gone: the
        browsers reload everything, as on any event.
        """
        self._push(None, False, [f"publications lost ({reason}): reload everything"])

    def _push(self, sequence: int | None, local: bool, changes: list[str]) -> None:
        event = {
            "sequence": sequence,
            "local": local,
            "pid": os.getpid(),
            "changes": changes,
        }
        with self.changed:
            self.events.append(event)
            self.count += 1
            self.changed.notify_all()

    def since(self, seen: int, timeout: float) -> tuple[int, list[dict[str, t.Any]]]:
        """The publications after the first ``seen``, waiting up to
        ``timeout`` seconds for one.
        """
        with self.changed:
            self.changed.wait_for(lambda: self.count > seen, timeout=timeout)
            new = min(self.count - seen, len(self.events))
            return self.count, list(self.events)[len(self.events) - new :]


def _summary(change: CommittedChange) -> str:
    key = ", ".join(map(str, change.primary_key))
    text = f"{change.operation} {change.table} #{key}"
    if change.columns:
        text += f" ({', '.join(sorted(change.columns))})"
    return text


def feed() -> Feed:
    """The current app's feed."""
    result: Feed = current_app.extensions["example_live"]
    return result


def init_app(app: Flask) -> None:
    """Give the app its feed and pages; it listens once its tables exist."""
    app.extensions["example_live"] = Feed()
    app.register_blueprint(bp)


def listen(app: Flask) -> None:
    """Receive the publications of every instance: connecting the first
    receiver starts this process's listener.
    """
    live: Feed = app.extensions["example_live"]
    if not live.listening:
        live.listening = True
        # Weakly, a method of the feed that the app holds: it goes with the app.
        models_committed_anywhere.connect(live.received, sender=app)
        publications_lost.connect(live.lost, sender=app)


@bp.get("/live")
def page() -> str:
    """This instance, and what it received."""
    live = feed()
    return render_template(
        "live.html",
        pid=os.getpid(),
        count=live.count,
        events=list(reversed(live.events)),
    )


@bp.get("/live/events")
def events() -> Response:
    """The publications this instance receives from now on, as Server-Sent
    Events (``?seconds=`` bounds the stream, for tests).
    """
    live = feed()
    seconds = min(request.args.get("seconds", STREAM_SECONDS, type=float), 3600.0)

    def stream() -> t.Iterator[str]:
        seen = live.count
        end = time.monotonic() + seconds
        yield ": listening\n\n"
        while (left := end - time.monotonic()) > 0:
            seen, new = live.since(seen, min(left, KEEP_ALIVE))
            for event in new:
                yield f"data: {json.dumps(event)}\n\n"
            if not new:
                yield ": keep-alive\n\n"

    return Response(
        stream(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
