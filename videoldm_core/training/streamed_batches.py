"""A step's batch from a stream of clips (videoldm_core.training.shards through DataLoader worker
processes), encoded on the training device as it arrives: what StepBatches is for a dataset that
fits in memory, for one that never has to.

The stream only goes forward. The per-clip seeds of the noise, timestep and masks are the same
function of (seed, global position) as StepBatches', so which clip sits at a position is all that
differs from the in-memory path. What a checkpoint keeps (`state_dict`) is, per DataLoader worker,
the pass and sample index after the last clip training used; a resumed run starts each worker
there, and the worker whose turn was next (the DataLoader takes the workers' clips round-robin and
restarts at worker 0; a clip that comes early waits for its turn). A resumed run therefore trains
on exactly the clips, crops and seeds of an uninterrupted one: none of a finished step is read
again, none is lost (clips a worker had prefetched but training had not used are decoded again).
Resuming with another number of workers or ranks, or on another stream (shards, seed, shuffle
buffer, clip spec, flip), is refused."""

from __future__ import annotations

import datetime
import functools
import os
import time
from collections import defaultdict, deque
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .batches import clip_seed
from .objective import TrainingError
from .stop_request import stop_from_training_process_only

# a data worker that gives no clip in this long has stalled: its rank stops, naming itself, well
# before the other ranks' step collectives time out (distributed.STEP_TIMEOUT, 30 min)
CLIP_TIMEOUT = datetime.timedelta(minutes=10)
# except before the first clip: a resumed stream first reads its pass through to where it stopped
FIRST_CLIP_TIMEOUT = datetime.timedelta(hours=2)


class StreamedBatches:
    def __init__(self, clips, batch_size: int, encode: Callable[[list[dict]], dict], seed: int = 0, workers: int = 2):
        """`clips`: a ShardClips; `encode(items)`: the batch the training phases read (latents, text,
        ...) of the decoded clips; `workers`: DataLoader worker processes decoding ahead (0: none)."""
        if batch_size < 1:
            raise TrainingError(f"expected a batch size of at least 1, found {batch_size}.")
        self.clips, self.batch_size, self.encode, self.seed, self.workers = clips, batch_size, encode, seed, workers
        self.next_step, self.next_worker = 0, 0
        self.positions: dict[int, tuple[int, int]] = {}
        self.early: dict[int, deque] = defaultdict(deque)   # clips that came before their worker's turn
        self.skipped: dict[int, int] = {}
        self.wait_seconds = 0.0   # time spent waiting for clips, summed (the data-wait share of a step)
        self._iterator = None
        self._flowing = False   # a clip came from the workers since they started

    def _start_workers(self):
        if self._iterator is None:
            self.clips.start = dict(self.positions)
            loader = DataLoader(self.clips, batch_size=None, num_workers=self.workers,
                                prefetch_factor=2 if self.workers else None,
                                timeout=CLIP_TIMEOUT.total_seconds() if self.workers else 0,
                                worker_init_fn=functools.partial(stop_from_training_process_only, os.getpid()))
            self._iterator, self._flowing = iter(loader), False

    def _take_clip(self):
        item = self._from_workers()
        self.early[int(item["position"][0])].append(item)

    def _next_clip(self) -> dict:
        """The next clip in the workers' round-robin order, from the worker whose turn it is."""
        self._start_workers()
        while not self.early[self.next_worker]:
            self._take_clip()
        item = self.early[self.next_worker].popleft()
        self.next_worker = (self.next_worker + 1) % max(self.workers, 1)
        return item

    def _from_workers(self) -> dict:
        """The next clip any worker gives. A DataLoader that timed out can be asked again (it keeps its
        place): before the first clip, up to FIRST_CLIP_TIMEOUT in all, saying so each time."""
        rank = f"rank {dist.get_rank()}" if dist.is_available() and dist.is_initialized() else "this process"
        waited = datetime.timedelta(0)
        while True:
            try:
                item = next(self._iterator)
                self._flowing = True
                return item
            except RuntimeError as e:
                if "timed out" not in str(e):
                    raise
                waited += CLIP_TIMEOUT
                if self._flowing or waited >= FIRST_CLIP_TIMEOUT:
                    raise TrainingError(f"{rank}: no clip came from its {self.workers} data worker(s) in "
                                        f"{waited.total_seconds() / 60:g} min; a worker stalled (a shard download that "
                                        "hangs, a decoder stuck on a clip). Stopped here, so that the other ranks do "
                                        "not wait for this one until their step times out.") from None
                print(f"{rank}: waiting for the first clip ({waited.total_seconds() / 60:g} min; a resumed stream "
                      "reads its pass through to where it stopped)", flush=True)

    def wait_for_first_clip(self):
        """Blocks until the workers give their first clip (every rank calls this, then waits for the others
        at the long barrier): a resumed stream's read-through to its position then delays no step, whose
        collectives wait for a late rank only distributed.STEP_TIMEOUT."""
        self._start_workers()
        if not self._flowing:
            self._take_clip()

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> dict:
        if step != self.next_step:
            raise TrainingError(f"streamed training data goes forward only: step {step} was asked for, the stream "
                                f"is at step {self.next_step} (a resumed run restores the stream from its checkpoint).")
        started = time.perf_counter()
        items = [self._next_clip() for _ in range(self.batch_size)]
        self.wait_seconds += time.perf_counter() - started
        for item in items:
            worker, pass_index, index = (int(v) for v in item.pop("position"))
            self.positions[worker] = (pass_index, index + 1)
            self.skipped[worker] = int(item.pop("skipped"))
        batch = self.encode(items)
        positions = [(step * world_size + rank) * self.batch_size + i for i in range(self.batch_size)]
        batch["sample_seeds"] = torch.tensor([clip_seed(self.seed, p) for p in positions])
        batch["keys"] = [item["key"] for item in items]
        self.next_step = step + 1
        return batch

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def state_dict(self) -> dict:
        return {"step": self.next_step, "workers": self.workers, "next_worker": self.next_worker,
                "positions": {str(w): list(p) for w, p in sorted(self.positions.items())},
                "stream": getattr(self.clips, "identity", None)}

    def _check_same_stream(self, saved: dict | None, step: int):
        """A checkpoint's positions pick the same clips only in the same stream (ShardClips.identity)."""
        ours = getattr(self.clips, "identity", None)
        if ours is None:
            return
        if saved is None:   # written before checkpoints stated their stream: passes were dealt unevenly
            readers = int(os.environ.get("WORLD_SIZE", 1)) * max(self.workers, 1)
            if len(self.clips.urls) % readers:
                raise TrainingError(f"the checkpoint at step {step} was written by an earlier version, which dealt "
                                    f"{len(self.clips.urls)} shards to {readers} readers unevenly; its positions pick "
                                    "other clips now. Start a fresh output folder (or resume with the earlier version).")
            return
        differ = [k for k in ours if k != "spec" and saved.get(k) != ours[k]]
        differ += [f"spec.{k}" for k in ours["spec"] if k in saved.get("spec", {}) and saved["spec"][k] != ours["spec"][k]]
        if differ:
            raise TrainingError(f"the checkpoint at step {step} holds positions in another stream of clips: {differ} "
                                f"differ from this run's (shards: the data.shards list; spec: data.frames, fps, size, "
                                "crop, start), where they would pick other clips. Resume with the run's own data "
                                "settings, or start a fresh output folder.")

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """Go on from a checkpoint at `step` (its `state_dict`, None when it has none)."""
        if state is None or state.get("step") != step:
            raise TrainingError(f"the checkpoint at step {step} holds no position of the streamed data "
                                f"(found {state!r}); it was written by a run on other data. Start a fresh output folder.")
        self._check_same_stream(state.get("stream"), step)
        if state["workers"] != self.workers:
            raise TrainingError(f"the checkpoint's stream was read by {state['workers']} data worker(s), this run has "
                                f"{self.workers}; resume with data.workers = {state['workers']}.")
        self.positions = {int(w): (int(p[0]), int(p[1])) for w, p in state["positions"].items()}
        self.next_step, self.next_worker, self._iterator = step, int(state["next_worker"]), None
        self.early.clear()
