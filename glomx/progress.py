"""How far a long step is, so that a person can tell a slow step from a hung one.

On a terminal a tqdm bar; otherwise (a log, ``dvc repro`` in CI, a pipe) a line on stderr at
most every ``every`` seconds and one when the count reaches its total, saying what is being
done, how many of how many, the time elapsed and, where it means something, the rate::

    evaluate: scoring cnn (2 of 4 models): 320/620 images, 42 s elapsed, 7.6 images/s

Lines go to stderr only, never into a file the pipeline writes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
EVERY = 30.0  # seconds between two lines off a terminal


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 05 s``, ``1 h 02 min``: elapsed time at a glance."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """``what`` is being done to ``total`` ``unit`` (images, folds, models...): a bar on a
    terminal, else a line on stderr every ``every`` seconds, when the count reaches ``total``,
    with every ``note`` (an event worth its own line, e.g. a fold finished) and, at the end,
    for a count not shown yet. ``rate`` adds ``<unit>/s``; ``enabled=False`` shows nothing."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        enabled: bool = True,
        every: float = EVERY,
        rate: bool = True,
    ) -> None:
        self.what, self.total, self.unit, self.every, self.rate = what, total, unit, every, rate
        self.done = self.shown = 0
        self.start = self.last = time.monotonic()
        self.tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=not self.tty)
        self.lines = enabled and not self.tty

    def _line(self, note: str = "") -> str:
        """What is done so far, in one line."""
        elapsed = time.monotonic() - self.start
        text = f"{self.what}: {self.done:,}/{self.total:,} {self.unit}, {duration(elapsed)} elapsed"
        if self.rate:
            text += f", {self.done / max(elapsed, 1e-9):.1f} {self.unit}/s"
        return f"{text}; {note}" if note else text

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more done (0: only a line if one is due, for a loop that waits)."""
        self.done += n
        self.bar.update(n)
        if note and self.tty:
            self.bar.write(f"{self.what}: {note}", file=sys.stderr)
        now = time.monotonic()
        due = now - self.last >= self.every or (n and self.done == self.total)
        if self.lines and (due or note):
            self._show(now, note)

    def _show(self, now: float, note: str = "") -> None:
        self.last, self.shown = now, self.done
        print(self._line(note), file=sys.stderr, flush=True)

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, each counted done when the next is asked for; closed after the last."""
        with self:
            for item in items:
                yield item
                self.update()

    def close(self) -> None:
        """The last line, when the last count was not shown yet."""
        self.bar.close()
        if self.lines and self.shown != self.done:
            self._show(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
