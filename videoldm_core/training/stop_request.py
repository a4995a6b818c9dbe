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


# how long a data worker goes on serving its rank after a SIGTERM: the step the rank is finishing
# takes the clips it is waiting for (a few seconds of decoding), then the rank stops reading
WORKER_GRACE_SECONDS = 10.0


def stop_after_grace(worker_id: int = 0):
    """A DataLoader worker's start. Slurm signals every process of a job: a worker that died of the
    SIGTERM failed its rank on the spot (torch raises in the training process when a worker is killed
    by a signal), before the stop and its checkpoint. So a SIGTERM ends a worker WORKER_GRACE_SECONDS
    later, with status 0; a second one (multiprocessing's terminate, as its rank exits) at once."""
    def stop_later(signum, frame):
        signal.signal(STOP_SIGNAL, lambda signum, frame: os._exit(0))
        timer = threading.Timer(WORKER_GRACE_SECONDS, os._exit, (0,))
        timer.daemon = True
        timer.start()

    signal.signal(STOP_SIGNAL, stop_later)
