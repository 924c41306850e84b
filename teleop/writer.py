"""Episode writing off the control loop: a background thread in front of the store's
crash-safe streaming :class:`~robopolicy.data.store.EpisodeWriter`.

The streaming writer compresses and writes a block of steps every ``flush_every`` appends;
with camera images that block costs tens of milliseconds, more than a 20 Hz control tick has to
spare, and the loop would stall on every flush. Here the loop only puts steps on a bounded
queue; one thread takes them in order and does all store work (begin, append, commit,
discard), so the data lands in exactly the order it was given, and a commit is done only after
every step before it was written. The queue's bound caps the memory a slow disk can take; when
it is full the loop waits (it slows down rather than losing steps).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from robopolicy.data.store import EpisodeStore, EpisodeWriter

_STOP = object()


class BackgroundEpisodeWriter:
    """``begin()``, ``append(step)`` each tick, then ``commit(meta)`` or ``discard()``; both
    wait until the thread has done them. ``close()`` discards an open episode and stops the
    thread. An error in the thread is raised again by the next call from the loop."""

    def __init__(self, store: EpisodeStore, max_queue: int = 256, flush_every: int = 64):
        self.store, self.flush_every = store, flush_every
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._writer: EpisodeWriter | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="episode-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side
    def begin(self) -> None:
        self._put(("begin", None, None))

    def append(self, step: Mapping[str, Any]) -> None:
        """Queue one step (the caller must not modify its arrays afterwards)."""
        self._put(("append", step, None))

    def commit(self, meta: Mapping[str, Any] | None = None) -> int:
        """Write every queued step, then commit the episode; returns its index."""
        return self._call("commit", meta)

    def discard(self) -> None:
        """Drop the open episode; saved episodes are untouched."""
        self._call("discard", None)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> BackgroundEpisodeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backlog(self) -> int:
        """Steps and commands waiting for the thread."""
        return self._queue.qsize()

    def _put(self, item) -> None:
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("episode writer thread is closed")
        self._queue.put(item)

    def _call(self, op: str, arg):
        done: Future = Future()
        self._put((op, arg, done))
        return done.result()  # re-raises what the thread raised for this command

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ------------------------------------------------------------------ the thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                if self._writer is not None and not self._writer.closed:
                    self._writer.discard()  # an episode nobody committed
                return
            op, arg, done = item
            try:
                result = self._do(op, arg)
            except BaseException as exc:  # handed to the loop, which raises it
                if done is None:
                    self._error = exc
                else:
                    done.set_exception(exc)
                continue
            if done is not None:
                done.set_result(result)

    def _do(self, op: str, arg):
        if op == "begin":
            if self._writer is not None and not self._writer.closed:
                self._writer.discard()
            self._writer = self.store.episode_writer(flush_every=self.flush_every)
            return None
        if op == "append":
            self._writer.append(arg)
            return None
        writer, self._writer = self._writer, None
        if writer is None or writer.closed:
            return None if op == "discard" else self._no_episode()
        return writer.commit(arg) if op == "commit" else writer.discard()

    def _no_episode(self):
        raise RuntimeError("commit without an open episode (call begin() first)")


class InlineEpisodeWriter(BackgroundEpisodeWriter):
    """The same interface, writing in the caller's thread (the benchmark's reference)."""

    def __init__(self, store: EpisodeStore, flush_every: int = 64):  # noqa: D107
        self.store, self.flush_every = store, flush_every
        self._writer = None
        self._error = None

    def _put(self, item) -> None:
        op, arg, _ = item
        self._do(op, arg)

    def _call(self, op: str, arg):
        return self._do(op, arg)

    def close(self) -> None:
        if self._writer is not None and not self._writer.closed:
            self._writer.discard()

    @property
    def backlog(self) -> int:
        return 0
