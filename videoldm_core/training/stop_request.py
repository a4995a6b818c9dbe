"""A stop asked of a training run from outside: the SIGTERM a cluster scheduler sends before it
preempts a job or its time runs out (Slurm sends it to every process of the job; torchrun passes
its own on to each rank and kills them 30 s later). The run finishes the step it is in, every rank
stops after the same step, a checkpoint is written and the process exits; the same command resumes
from there. A rank often gets the signal twice (Slurm's, then torchrun's): the second changes
nothing. What ends a run at once is what follows the grace period anyway: SIGKILL (or Ctrl+C)."""

from __future__ import annotations

import os
import signal
import threading

from .distributed import World, ranks_where

STOP_SIGNAL = signal.SIGTERM


class StopRequest:
    """Held around a run's training loop (a context manager). Called at a step boundary, on every
    rank, it says whether any rank was asked to stop: one all-reduce of a flag per rank, so all
    ranks stop after the same step (one rank stopping alone would leave the others waiting in the
    next gradient all-reduce)."""

    def __init__(self, world: World):
        self.world = world
        self.received = False   # this rank was sent STOP_SIGNAL
        self.ranks: list[int] = []   # the ranks that were, once a call has found any
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # Python runs signal handlers there only
            self._previous = signal.signal(STOP_SIGNAL, self._receive)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(STOP_SIGNAL, self._previous)
            self._previous = None

    def _receive(self, signum, frame):
        self.received = True

    def __call__(self) -> bool:
        self.ranks = ranks_where(self.received, self.world)
        return bool(self.ranks)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process the signal ended (143), so wrappers that read it as
        "preempted" keep doing so."""
        return 128 + int(STOP_SIGNAL)


def stop_from_training_process_only(training_pid: int, worker_id: int = 0):
    """A DataLoader worker's start (`functools.partial(stop_from_training_process_only, os.getpid())`).
    Slurm signals every process of a job, and torchrun its ranks' whole process groups: a worker that
    ended on that SIGTERM took the clips it had queued with it, and its rank failed at its next read,
    before the stop and its checkpoint. So a worker takes a SIGTERM only from its training process
    (DataLoader's shutdown, multiprocessing's terminate) or its parent, and ends at once with status 0,
    as torch's own handler does; one from anyone else is ignored, and the worker ends with its loader
    or with its training process. Where the sender cannot be known (no sigwaitinfo: macOS, Windows)
    torch's own handling stays."""
    if not hasattr(signal, "sigwaitinfo"):
        return
    own = {training_pid, os.getppid()}   # the parent differs where a forkserver starts the workers
    signal.pthread_sigmask(signal.SIG_BLOCK, {STOP_SIGNAL})   # in every thread: only the waiter below takes it

    def wait():
        while True:
            if signal.sigwaitinfo({STOP_SIGNAL}).si_pid in own:
                os._exit(0)

    threading.Thread(target=wait, name="videoldm-stop-from-training-process", daemon=True).start()
