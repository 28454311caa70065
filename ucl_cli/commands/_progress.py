"""Progress of long steps on stderr, one view for every command (index, the first built-in bank,
eval, synth). Not a command itself (modules whose names start with '_' are not registered).

On a terminal it is a Rich bar with counts, elapsed time and time left, gone when the step
ends. Anywhere else (a pipe, a log file, CI) a bar would be one line of control codes written at
the end, so it prints a plain line instead, every INTERVAL_S seconds or another tenth of the work,
whichever comes first, once a step has run INTERVAL_S seconds (a quick step says nothing):
"ucl: embedding 300/1,054 texts (28%), 1 min 40 s left".

The library reports progress through listener callbacks and never prints; the adapters here
turn those callbacks into this view.
"""

from __future__ import annotations

import math
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ucl_cli.bank.indexer import ROW_NOUNS, IndexListener, IndexReport
from ucl_cli.errors import InputFileError

if TYPE_CHECKING:
    from ucl_cli.bridge.listener import Listener

# Skipped inputs of `ucl index` are named one by one up to this many; the rest are only counted.
SHOWN_SKIPS = 10


def duration(seconds: float) -> str:
    """'45 s', '1 min 40 s', '2 h 5 min': as a person reads a time left."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min"


class _Counts(ProgressColumn):
    """'300/1,054 texts' (or '28%' for work measured in abstract units)."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("counts", True):
            return Text("" if task.total is None else f"{task.percentage:3.0f}%")
        noun = task.fields.get("noun", "")
        done = f"{int(task.completed):,}"
        if task.total is None:
            return Text(f"{done} {noun}" if noun else "")
        return Text(f"{done}/{int(task.total):,} {noun}".rstrip())


class ProgressView:
    """The progress of one step at a time, drawn on stderr (use as a context manager).

    `stage` starts a step (what it does, how much there is, what is counted); `update` and
    `advance` report work done; `say` prints a line above the bar. Descriptions are plain text;
    `say` takes Rich markup (escape what the user wrote). Nothing is drawn before the first
    `stage`, so a step that turns out to have nothing to do shows nothing.
    """

    INTERVAL_S = 10.0  # from this long into a step, a plain line at least this often...
    MARKS = 10  # ...or whenever another tenth of the work is done,
    MIN_GAP_S = 1.0  # but never two within this long
    WINDOW_S = 60.0  # the time left comes from the speed over this last stretch
    clock = staticmethod(time.monotonic)

    def __init__(self, console: Console, *, counts: bool = True):
        self.console = console
        self.counts = counts  # False: work in abstract units, shown as a percentage only
        self.description = ""
        self.noun = ""
        self.total: float | None = None
        self.done: float = 0.0
        self._active = False  # inside the `with` block
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._samples: deque[tuple[float, float]] = deque()
        self._started = self._last_line = 0.0
        self._next_mark = 1  # in tenths (whole numbers: 3 * 0.1 > 0.3 in floating point)

    @property
    def live(self) -> bool:
        """Whether a bar is drawn (stderr is a terminal) rather than plain lines."""
        return self.console.is_terminal

    def __enter__(self) -> ProgressView:
        self._active = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._active = False
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._task = None, None

    def stage(self, description: str, total: float | None = None, *, noun: str = "") -> None:
        """Start a step: `total` units of work (None: unknown), counted as `noun`."""
        self.description, self.noun, self.total, self.done = description, noun, total, 0.0
        now = self.clock()
        self._samples = deque([(now, 0.0)])
        self._started = self._last_line = now
        self._next_mark = 1
        if not (self.live and self._active):
            return
        if self._bar is None:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                _Counts(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        if self._task is not None:
            self._bar.remove_task(self._task)  # a new task: its own total (maybe none) and clock
        self._task = self._bar.add_task(
            escape(description), total=total, counts=self.counts, noun=noun
        )

    def update(
        self,
        done: float,
        *,
        total: float | None = None,
        description: str | None = None,
        line: bool = False,
    ) -> None:
        """`done` units of the step's work are finished; `line` forces a plain line (a milestone
        worth a line in a log)."""
        self.done = done
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        now = self.clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.WINDOW_S:
            self._samples.popleft()
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=done,
                total=self.total,
                description=escape(self.description),
            )
        elif line or self._line_due(now):
            self._line(now)

    def advance(self, steps: float = 1) -> None:
        if steps:  # "0 more" (e.g. no cache hits) is no news
            self.update(self.done + steps)

    def say(self, message: str, *, warning: bool = True) -> None:
        """One line above the bar: 'ucl: ...', in yellow for a warning. `message` is markup."""
        prefix = "[yellow]ucl:[/]" if warning else "ucl:"
        self.console.print(f"{prefix} {message}", highlight=False, soft_wrap=True)

    def left(self) -> float | None:
        """Seconds left at the recent speed, or None while it is unknown."""
        if self.total is None or len(self._samples) < 2:
            return None
        (start, first), (now, last) = self._samples[0], self._samples[-1]
        if now <= start or last <= first:
            return None
        return max(0.0, self.total - self.done) / ((last - first) / (now - start))

    def text(self) -> str:
        """The plain line (without 'ucl: '): 'embedding 300/1,054 texts (28%), 1 min 40 s left'."""
        parts = [self.description]
        if self.counts:
            count = f"{int(self.done):,}"
            if self.total is not None:
                count += f"/{int(self.total):,}"
            parts.append(f"{count} {self.noun}".rstrip())
        text = " ".join(part for part in parts if part)
        if self.total:
            text += f" ({math.floor(100 * self.done / self.total)}%)"
        left = self.left()
        if left is not None and self.done < (self.total or 0):
            text += f", {duration(left)} left"
        return text

    def _line_due(self, now: float) -> bool:
        if now - self._started < self.INTERVAL_S:
            return False
        since = now - self._last_line
        if since >= self.INTERVAL_S:
            return True
        return self._marks() >= self._next_mark and since >= self.MIN_GAP_S

    def _marks(self) -> int:
        """Tenths of the work done (0 while the total is unknown)."""
        return math.floor(self.MARKS * self.done / self.total + 1e-9) if self.total else 0

    def _line(self, now: float) -> None:
        self._last_line = now
        self._next_mark = self._marks() + 1
        self.console.print(f"ucl: {self.text()}", markup=False, highlight=False, soft_wrap=True)


class IndexProgress(IndexListener):
    """`index_items`' listener drawn on a ProgressView; names the first few skipped inputs.

    Rows done are those added, found already in the bank, or left out (`skipped_line` counts
    the corpus lines left out before the indexer sees them).
    """

    def __init__(self, view: ProgressView, modality: str = "text"):
        self.view = view
        self.noun = ROW_NOUNS.get(modality, "items")
        self.skips = 0
        self.line_skips = 0
        self.saving: int | None = None  # rows in the bank being published, if any

    def start(self, total: int | None) -> None:
        self.view.stage("embedding", total, noun=self.noun)

    # IndexListener -----------------------------------------------------------------------

    def waiting(self, holder: str) -> None:
        self.view.say(f"waiting for {escape(holder)}, which is writing this bank")

    def resumed(self, rows: int) -> None:
        self.view.say(f"resuming: {rows:,} rows embedded by an interrupted run are kept")

    def progress(self, report: IndexReport) -> None:
        done = report.added + report.duplicates + report.moved + report.skipped
        self.view.update(done + self.line_skips)

    def skipped(self, name: str, reason: str) -> None:
        self._skip(name, reason)

    def publishing(self, rows: int) -> None:
        self.saving = rows
        self.view.stage(f"saving {rows:,} rows")

    # corpus and media callbacks ----------------------------------------------------------

    def skipped_line(self, where: str, reason: str) -> None:
        self.line_skips += 1
        self._skip(where, reason)

    def skipped_file(self, error: InputFileError) -> None:
        self._skip(error.path, error.reason)

    def _skip(self, name: str, reason: str) -> None:
        self.skips += 1
        if self.skips <= SHOWN_SKIPS:
            self.view.say(f"skipping {escape(str(name))}: {escape(reason)}")
        elif self.skips == SHOWN_SKIPS + 1:
            self.view.say("(further skipped inputs are only counted)")


def stage_listener(view: ProgressView) -> Listener:
    """A run's stages and skipped files on the progress view (`ucl eval`, `ucl calibrate`)."""
    from ucl_cli.bridge.listener import Listener

    def on_skip(error: InputFileError) -> None:
        view.say(f"skipping {escape(str(error))}")

    def on_stage(text: str, total: int) -> None:
        view.stage(text, total or None)

    return Listener(on_skip=on_skip, on_stage=on_stage, on_advance=view.advance)
