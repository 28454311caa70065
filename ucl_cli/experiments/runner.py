"""Run the tasks of a synthetic experiment, in this process or in a pool of worker processes.

Each task runs on one intra-op thread, whatever the number of workers: the small matrices of
these models gain little from a second thread, two single-threaded tasks side by side use two
cores fully, and one thread per task makes a seed's numbers independent of how many workers ran
it. Workers are spawned (not forked, which is unsafe once torch has started its thread pools) and
report progress through a queue that the calling process drains.

A run can be resumed: tasks whose results are already known (from an earlier, interrupted run
with the same options) are not run again, and every finished task is handed to `on_task_done`
with the results so far, so that the caller can save them as it goes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

import torch

from ucl_cli.errors import UsageError
from ucl_cli.experiments.options import SynthOptions
from ucl_cli.experiments.results import SynthResults
from ucl_cli.experiments.tasks import (
    REFERENCE_UNITS,
    CriticRun,
    ReferenceRun,
    TaskReport,
    critic_task_units,
    run_critic,
    run_references,
)

Outcome = CriticRun | ReferenceRun


@dataclass(frozen=True)
class Progress:
    """Work done so far (in units: one per training epoch of a task, a few per evaluation)."""

    done: float
    total: float
    message: str


ProgressCallback = Callable[[Progress], None]
# Called in the calling process after each task, with everything finished so far.
TaskDoneCallback = Callable[[SynthResults], None]


@dataclass(frozen=True)
class TaskSpec:
    """critic None means the exact-references task of the seed."""

    seed: int
    critic: str | None

    def units(self, options: SynthOptions) -> float:
        return REFERENCE_UNITS if self.critic is None else critic_task_units(options)


@dataclass(frozen=True)
class Resume:
    """What an interrupted run already finished, and the wall time it had spent."""

    outcomes: Sequence[Outcome] = ()
    wall_seconds: float = 0.0
    workers: int = 1  # how many the earlier run used (reported if nothing is left to run)


def plan_tasks(options: SynthOptions) -> list[TaskSpec]:
    """Seed by seed (its critics, then its references), so that an interrupted run leaves
    whole seeds behind."""
    tasks = []
    for seed in options.seeds:
        tasks += [TaskSpec(seed, critic) for critic in options.critics]
        if options.exact_references:
            tasks.append(TaskSpec(seed, None))
    return tasks


def default_workers(tasks: int) -> int:
    """One worker per CPU this process may use, at most one per task."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, tasks))


def run_synthetic(
    options: SynthOptions,
    *,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_task_done: TaskDoneCallback | None = None,
    resume: Resume | None = None,
) -> SynthResults:
    """Run every task of `options` not already in `resume` and collect the results.

    Raises UclError on bad options, before anything runs.
    """
    options.validate()
    resume = resume or Resume()
    known = {_key(outcome): outcome for outcome in resume.outcomes}
    tasks = [task for task in plan_tasks(options) if (task.seed, task.critic) not in known]
    workers = default_workers(len(tasks)) if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; got {workers}")
    reported_workers = workers if tasks else resume.workers
    start = time.perf_counter()
    collected: list[Outcome] = list(known.values())

    def results(complete: bool) -> SynthResults:
        wall = resume.wall_seconds + time.perf_counter() - start
        critic_runs = [out for out in collected if isinstance(out, CriticRun)]
        reference_runs = [out for out in collected if isinstance(out, ReferenceRun)]
        return SynthResults(options, critic_runs, reference_runs, wall, reported_workers, complete)

    def finished(outcome: Outcome) -> None:
        collected.append(outcome)
        if on_task_done is not None:
            on_task_done(results(complete=False))

    tracker = _Tracker(tasks, options, on_progress)
    if workers == 1 or len(tasks) <= 1:
        _run_here(tasks, options, tracker, finished)
    else:
        _run_in_pool(tasks, options, tracker, min(workers, len(tasks)), finished)
    return results(complete=True)


def execute(options: SynthOptions, task: TaskSpec, report: TaskReport) -> Outcome:
    """One task on one intra-op thread (restored afterwards)."""
    with _threads(1):
        if task.critic is None:
            return run_references(options, task.seed, report)
        return run_critic(options, task.seed, task.critic, report)


def _key(outcome: Outcome) -> tuple[int, str | None]:
    return (outcome.seed, outcome.critic if isinstance(outcome, CriticRun) else None)


class _Tracker:
    """Sums per-task progress into one Progress for the callback."""

    def __init__(self, tasks, options, callback: ProgressCallback | None):
        self.total = sum(task.units(options) for task in tasks)
        self.done = [0.0] * len(tasks)
        self.callback = callback

    def update(self, index: int, units: float, message: str) -> None:
        self.done[index] = units
        if self.callback is not None:
            self.callback(Progress(sum(self.done), self.total, message))


def _run_here(tasks, options, tracker: _Tracker, finished: Callable[[Outcome], None]) -> None:
    for index, task in enumerate(tasks):

        def report(units: float, message: str, index: int = index) -> None:
            tracker.update(index, units, message)

        finished(execute(options, task, report))


def _run_in_pool(tasks, options, tracker: _Tracker, workers: int, finished) -> None:
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_start, initargs=(messages,)
    ) as pool:
        pending: dict[Future, int] = {
            pool.submit(_worker_task, options, task, index): index
            for index, task in enumerate(tasks)
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(messages, tracker)
                for future in done:
                    pending.pop(future)
                    finished(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        _drain(messages, tracker)


def _drain(messages, tracker: _Tracker) -> None:
    while True:
        try:
            index, units, message = messages.get_nowait()
        except queue.Empty:
            return
        tracker.update(index, units, message)


_worker_messages = None  # set in each worker process by _worker_start


def _worker_start(messages) -> None:
    global _worker_messages
    _worker_messages = messages
    torch.set_num_threads(1)


def _worker_task(options: SynthOptions, task: TaskSpec, index: int) -> Outcome:
    def report(units: float, message: str) -> None:
        _worker_messages.put((index, units, message))

    return execute(options, task, report)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
