"""The training loop: AdamW over the trainable phases only, linear warm-up, gradient clipping,
mixed precision, EMA weights, checkpoints with exact resume, seeded determinism, a loss CSV, and
under torchrun DistributedDataParallel or FSDP (`sharding`).

Exact resume: a step's batch and randomness are functions of (seed, step) alone (see batches.py),
and a checkpoint holds the trainable weights, optimiser and grad-scaler state, EMA weights and the
step, so continuing from step k reproduces the uninterrupted run's losses bit for bit on the same
machine.

Sharding "fsdp" (FSDP2's fully_shard over each phase) splits the trainable weights, their gradients,
the AdamW moments and the EMA weights over the ranks: what the paper's all-trainable 1.5B
interpolation model needs on 40 GB GPUs (bench/memory_plan.py). Checkpoints are the same files
either way: the shards are gathered one tensor at a time and rank 0 writes whole tensors, so a run
may resume with the other sharding or another number of ranks (streamed data aside).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..state_dict import check_weights
from .distributed import (World, barrier, full_tensor, gather_to_main, init_world, is_sharded, mean_over_ranks,
                          ranks_where, scatter_from_main, shard_like, shard_module)
from .objective import Phase, TrainingError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SHARDINGS = ("ddp", "fsdp")
CHECKPOINT_METADATA_KEY = "videoldm_training"


@dataclass
class TrainConfig:
    steps: int = 100
    lr: float = 1e-4
    warmup: int = 0                   # steps of linear warm-up from 0 to lr
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    grad_clip: float | None = 1.0     # max global gradient norm per phase; None: no clipping
    precision: str = "fp32"           # autocast dtype for the forward: fp32 (off), bf16, fp16 (with a grad scaler)
    ema_decay: float | None = None    # e.g. 0.999: keep EMA weights, exported instead of the raw ones (warmed up)
    seed: int = 0
    checkpoint_every: int = 0         # steps; 0: only at the end
    keep_checkpoints: int = 2
    sharding: str = "ddp"             # under torchrun: "ddp" (each rank holds everything) or "fsdp" (split over ranks)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.steps < 1:
            raise TrainingError(f"expected at least 1 training step, found {self.steps}.")
        if not self.lr > 0:
            raise TrainingError(f"expected a learning rate > 0, found {self.lr}.")
        if self.warmup < 0 or self.checkpoint_every < 0:
            raise TrainingError(f"expected warm-up and checkpoint interval ≥ 0, found {self.warmup} and {self.checkpoint_every}.")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"expected a precision in {list(PRECISIONS)}, found {self.precision!r}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise TrainingError(f"expected an EMA decay in (0, 1) or none, found {self.ema_decay}.")
        if self.sharding not in SHARDINGS:
            raise TrainingError(f"expected a sharding in {list(SHARDINGS)}, found {self.sharding!r}.")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            # negative: clip_grad_norm_ would turn every step into gradient ascent; 0: no step at all
            raise TrainingError(f"expected a gradient clipping norm > 0, or none for no clipping, found {self.grad_clip}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingError(f"expected a weight decay ≥ 0, found {self.weight_decay}.")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise TrainingError(f"expected betas as two numbers in [0, 1) (AdamW's moment decays), found {self.betas!r}.")
        if self.keep_checkpoints < 0:
            raise TrainingError(f"expected keep_checkpoints ≥ 0 (0 keeps them all), found {self.keep_checkpoints}.")
        if self.sharding == "fsdp" and self.precision == "fp16":
            # the grad scaler would find infs in its own shard only, and ranks would disagree on skipping a step
            raise TrainingError("sharding 'fsdp' trains in fp32 or bf16, found precision 'fp16'; use bf16.")
        self.betas = tuple(self.betas)

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of the update after `step` (0-based), warmed up as sgm's LitEma does: at most
        (1 + n) / (10 + n) after n updates, so a short run's EMA follows its weights instead of staying
        at the initial ones (0.999 alone keeps 37% of them after 1,000 steps)."""
        n = step + 1
        return min(self.ema_decay, (1 + n) / (10 + n))

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over the first `warmup` steps, then constant (step counts from 0)."""
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr


class Trainer:
    def __init__(self, phases: list[Phase], config: TrainConfig, sample_batch: Callable[[int, int, int], dict],
                 output_dir: str | Path | None = None, identity: dict | None = None, device: torch.device | str = "cpu",
                 world: World | None = None):
        """`sample_batch(step, rank, world_size)`: this rank's batch of step `step`.
        `identity`: what is being trained (spec, mode, ...); a checkpoint of another identity is refused."""
        if not phases:
            raise TrainingError("expected at least one training phase, found none.")
        self.phases, self.config, self.sample_batch = list(phases), config, sample_batch
        self.identity = dict(identity or {})
        self.device = torch.device(device)
        self.world = world or init_world()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.step = 0
        self._checkpointed_step = None   # the step of the checkpoint in output_dir this state is
        for phase in self.phases:
            if not any(p.requires_grad for p in phase.parameters()):
                raise TrainingError(f"phase '{phase.name}' has no trainable parameters.")
        if self.sharded and len(self.phases) > 1:
            raise TrainingError(f"sharding 'fsdp' trains one phase, found {len(self.phases)} "
                                f"({', '.join(p.name for p in self.phases)}) whose forwards call each other's "
                                "modules; use sharding 'ddp'.")
        self._gathered: dict | None = None   # whole weights while inside gathered() (FSDP)
        self.modules = [self._wrap(phase) for phase in self.phases]
        self.optimizers = [torch.optim.AdamW([p for p in phase.parameters() if p.requires_grad], lr=config.lr,
                                             betas=config.betas, weight_decay=config.weight_decay)
                           for phase in self.phases]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.ema = {k: v.detach().clone().float() for k, v in self.trainable_state().items()} if config.ema_decay else None
        self.history: list[dict] = []
        self._unlogged: list[dict] = []   # rows loss.csv could not take yet

    @property
    def sharded(self) -> bool:
        return self.world.distributed and self.config.sharding == "fsdp"

    def _wrap(self, phase: nn.Module) -> nn.Module:
        if not self.world.distributed:
            return phase
        if self.sharded:
            return shard_module(phase, self.device)   # the phase itself: its parameters become this rank's shards
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # gradients live in the all-reduce buckets (no second copy): 4 bytes per trainable parameter less
        return nn.parallel.DistributedDataParallel(phase, device_ids=ids, find_unused_parameters=True,
                                                   gradient_as_bucket_view=True)

    # --- state -----------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{phase.name}.{n}": p for phase in self.phases for n, p in phase.named_parameters() if p.requires_grad}

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The weights to export: EMA weights when kept, else the current ones (FSDP: whole tensors
        inside gathered(), on rank 0)."""
        if self.sharded:
            if self._gathered is None:
                raise TrainingError("the weights are split over the ranks (sharding 'fsdp'): read them inside "
                                    "trainer.gathered(), entered by every rank.")
            return self._gathered["ema"]
        return self._ema_state()

    def _ema_state(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {k: v.detach() for k, v in self.trainable_state().items()}
        return {k: v.to(p.dtype) for (k, v), p in zip(self.ema.items(), self.trainable_state().values())}

    def phase_state(self, phase_name: str, ema: bool = True) -> dict[str, torch.Tensor]:
        """One phase's weights with the phase prefix removed (e.g. the adapter's own state dict)."""
        if ema or not self.sharded:
            state = self.ema_state() if ema else {k: v.detach() for k, v in self.trainable_state().items()}
        else:
            self.ema_state()   # raises outside gathered()
            state = self._gathered["raw"]
        prefix = phase_name + "."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    @contextmanager
    def gathered(self):
        """Every rank enters this together; inside, rank 0's ema_state() and phase_state() are whole
        tensors on the CPU (FSDP: gathered once, a tensor at a time). Unsharded: changes nothing."""
        if not self.sharded:
            yield self
            return
        raw = {k: v.detach() for k, v in self.trainable_state().items()}
        self._gathered = {"ema": self._on_main(self._ema_state()), "raw": self._on_main(raw)}
        try:
            yield self
        finally:
            self._gathered = None

    def _on_main(self, tensors: dict) -> dict | None:
        """Whole CPU tensors of `tensors` on rank 0, None on the others; FSDP shards are gathered one
        tensor at a time (every rank calls this), so a rank never holds more than one whole tensor extra."""
        out = {}
        for key, value in tensors.items():
            if isinstance(value, torch.Tensor):
                value = full_tensor(value.detach())
                if self.world.is_main:
                    value = value.contiguous().cpu()
            out[key] = value
        return out if self.world.is_main else None

    # --- the loop ----------------------------------------------------------------------------------

    def train_step(self) -> dict:
        config, step = self.config, self.step
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) and k != "sample_seeds" else v
                 for k, v in self.sample_batch(step, self.world.rank, self.world.size).items()}
        batch["step"] = step
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 7919 + self.world.rank)
        lr = config.learning_rate(step)
        row = {"step": step + 1, "lr": lr}
        started = time.perf_counter()
        for phase, module, optimizer in zip(self.phases, self.modules, self.optimizers):
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            dtype = PRECISIONS[config.precision]
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                loss, logs = module(batch, generator)
            # every rank learns whether any rank's loss is not finite and all stop here together: one rank
            # stopping alone would leave the others waiting in the backward's gradient all-reduce
            failed = ranks_where(not bool(torch.isfinite(loss)), self.world)
            if failed:
                value = loss.item()
                where = f"loss is {value}" if not math.isfinite(value) else \
                    f"loss is not finite on rank(s) {', '.join(map(str, failed))}"
                raise TrainingError(f"step {step + 1}: phase '{phase.name}' {where}; lower the learning rate or use "
                                    "bf16/fp32 precision.")
            if self.sharded:
                # FSDP reduce-scatters the gradients a rank has; a parameter this rank's clips did not reach
                # (DDP's find_unused_parameters) gets a zero gradient, so every rank reduces the same tensors.
                # Between the forward and the backward the phase holds its whole (gathered) parameters: FSDP2
                # keeps the root module's parameters unsharded after its forward (reshard_after_forward is
                # False for the root), so this sum reads them without another all-gather.
                loss = loss + 0.0 * sum(p.sum() for p in phase.parameters() if p.requires_grad)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            params = [p for p in phase.parameters() if p.requires_grad]
            if self.scaler:
                self.scaler.unscale_(optimizer)
            # the whole gradient's norm (clipped to grad_clip when set); identical on every rank, since DDP
            # reduces the gradients and FSDP's norm is the full tensor's, so all ranks stop together
            norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf)))
            if not math.isfinite(norm) and not self.scaler:   # fp16's scaler skips such a step itself
                raise TrainingError(f"step {step + 1}: phase '{phase.name}' gradient norm is {norm} (the loss was "
                                    f"{loss.item()}); the step was not applied. Lower the learning rate or use "
                                    "bf16/fp32 precision.")
            if config.grad_clip is not None:
                row[f"{phase.name}/grad_norm"] = norm
            if self.scaler:
                # fp16 gradients overflowed at the scaler's scale: it skips this step and lowers the scale
                row[f"{phase.name}/skipped"] = float(not math.isfinite(norm))
                self.scaler.step(optimizer)
            else:
                optimizer.step()
            for key, value in logs.items():
                row[f"{phase.name}/{key}"] = mean_over_ranks(float(value), self.world)
        if self.scaler:
            self.scaler.update()
        if self.ema is not None:
            decay = config.ema_decay_at(step)
            with torch.no_grad():
                for (key, average), p in zip(self.ema.items(), self.trainable_state().values()):
                    average.lerp_(p.detach().float(), 1.0 - decay)
        self.step += 1
        row["seconds"] = time.perf_counter() - started
        self.history.append(row)
        self._log(row)
        if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < config.steps:
            self.save_checkpoint()
        return row

    def run(self, should_stop: Callable[[], bool] | None = None, on_step: Callable[[dict], None] | None = None) -> bool:
        """Train until config.steps; returns False when `should_stop` ended it early. What was
        learned so far is kept (and checkpointed when there is an output folder)."""
        finished = True
        while self.step < self.config.steps:
            if should_stop is not None and should_stop():
                finished = False
                break
            row = self.train_step()
            if on_step is not None:
                on_step(row)
        if self.output_dir is not None:
            if self._unlogged:
                self._log()   # the rows loss.csv could not take, once more
            if self._checkpointed_step != self.step:   # a finished run resumed: its checkpoint is this state
                self.save_checkpoint()
        return finished

    # --- files -----------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / "loss.csv"

    def _log(self, row: dict | None = None):
        """Append to loss.csv (rank 0); rewritten only when a new column appears. A log that cannot be
        written (a spreadsheet holding it open on Windows, a full disk) costs no training: its rows wait
        for the next step's write, and the one warning says so."""
        if self.log_path is None or not self.world.is_main:
            return
        self._unlogged += [row] if row is not None else []
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            header = _header(self.log_path)
            if header is not None and len(self._unlogged) == 1 and set(self._unlogged[0]) <= set(header):
                with open(self.log_path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=header).writerow(self._unlogged[0])
            else:   # a new column, or rows that waited: written whole, without what a failed append left
                first = self._unlogged[0]["step"]
                kept = [r for r in (read_log(self.log_path) if header else [])
                        if str(r.get("step", "")).isdigit() and int(r["step"]) < first]
                _write_log(self.log_path, kept + self._unlogged)
        except OSError as e:
            if len(self._unlogged) == 1 or row is None:
                log.warning("'%s' could not be written (%s); training goes on, and its %d row(s) from step %s are "
                            "written when it can be (a program holding the file open blocks it on Windows).",
                            self.log_path, e.strerror or e, len(self._unlogged), self._unlogged[0]["step"])
            return
        self._unlogged = []

    def checkpoint_dir(self, step: int | None = None) -> Path:
        if self.output_dir is None:
            raise TrainingError("no output folder was given, so there is nowhere to write checkpoints.")
        return self.output_dir / f"checkpoint-{self.step if step is None else step:07d}"

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Rank 0 writes trainable.safetensors (+ ema.safetensors) and optimizer.pt, whole tensors under
        FSDP too (gathered a tensor at a time); all ranks wait."""
        directory = Path(directory) if directory is not None else self.checkpoint_dir()
        stream = getattr(self.sample_batch, "state_dict", None)   # streamed data: each rank's position in it
        streams = gather_to_main({"ranks": self.world.size, **stream()}, self.world) if stream else None
        weights = self._on_main(self.trainable_state())
        ema = self._on_main(self.ema) if self.ema is not None else None
        optimizers = [self._optimizer_on_main(o) for o in self.optimizers]
        if self.world.is_main:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta = {CHECKPOINT_METADATA_KEY: json.dumps({"identity": self.identity, "step": self.step,
                                                         "config": asdict(self.config), "clips": clip_count(self.sample_batch)},
                                                        default=str)}
            save_file(weights, str(tmp / "trainable.safetensors"), metadata=meta)
            if ema is not None:
                save_file(ema, str(tmp / "ema.safetensors"), metadata=meta)
            torch.save({"step": self.step, "optimizers": optimizers,
                        "scaler": self.scaler.state_dict() if self.scaler else None}, tmp / "optimizer.pt")
            if streams is not None:
                (tmp / "data.json").write_text(json.dumps(streams, indent=1))
            synced(tmp)   # whole files on disk before the name says the checkpoint is there
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
            synced(directory.parent, files=False)
            self._prune_checkpoints()
        barrier(self.world)
        if self._own_checkpoint(directory):
            self._checkpointed_step = self.step
        return directory

    def _own_checkpoint(self, directory) -> bool:
        """Whether `directory` is this run's checkpoint of its current step, in its output folder."""
        return self.output_dir is not None and Path(directory).resolve() == self.checkpoint_dir().resolve()

    def _optimizer_on_main(self, optimizer) -> dict | None:
        """optimizer.state_dict() with whole tensors (FSDP: its moments gathered), on rank 0."""
        state = optimizer.state_dict()
        if not self.sharded:
            return state if self.world.is_main else None
        moments = {index: self._on_main(values) for index, values in sorted(state["state"].items())}
        return {**state, "state": moments} if self.world.is_main else None

    def _prune_checkpoints(self):
        if self.output_dir is None:
            return
        for left in self.output_dir.glob("checkpoint-*.tmp"):   # a crash's half-written checkpoints (rank 0 writes alone)
            if left.is_dir() and CHECKPOINT_NAME.fullmatch(left.name.removesuffix(".tmp")):
                shutil.rmtree(left, ignore_errors=True)
        if self.config.keep_checkpoints < 1:
            return
        found = checkpoints_in(self.output_dir)
        for old in found[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, directory: str | Path):
        """Continue from a checkpoint of the same identity (spec, mode, ...); the loss log is cut back
        to its step so the resumed rows replace the ones after it."""
        directory = Path(directory)
        weights = directory / "trainable.safetensors"
        if not weights.is_file():
            raise TrainingError(f"'{directory}' is not a training checkpoint: expected trainable.safetensors in it.")
        with readable(directory, weights.name):
            meta = read_checkpoint_metadata(weights)
        if meta.get("identity") != json.loads(json.dumps(self.identity, default=str)):
            theirs, ours = meta.get("identity", {}), json.loads(json.dumps(self.identity, default=str))
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise TrainingError(f"checkpoint '{directory.name}' was written for another training setup: it differs in "
                                f"{differ} (e.g. {differ[0]}: checkpoint {theirs.get(differ[0])!r}, this run "
                                f"{ours.get(differ[0])!r}). Resume with the same adapter spec and mode, or start fresh.")
        self._check_same_draws(meta, directory)
        with readable(directory, weights.name):
            state = load_file(str(weights))
        own = self.trainable_state()
        check_weights(own, state, f"checkpoint '{directory.name}' does not fit the trainable weights", TrainingError)
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(shard_like(state[k], p))
        # mmap: the ranks of a node share one copy in the page cache instead of each reading it whole (not on
        # Windows: a mapped file cannot be deleted, and the optimiser's state keeps it mapped past its pruning)
        with readable(directory, "optimizer.pt"):
            saved = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True, mmap=os.name != "nt")
        for optimizer, optimizer_state in zip(self.optimizers, saved["optimizers"]):
            optimizer.load_state_dict(self._sharded_optimizer_state(optimizer, optimizer_state))
            for group in optimizer.param_groups:   # this run's settings, as its learning rate is (the moments stay)
                group["betas"], group["weight_decay"] = self.config.betas, self.config.weight_decay
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            ema_file = directory / "ema.safetensors"
            with readable(directory, ema_file.name):
                ema = load_file(str(ema_file)) if ema_file.is_file() else {k: v.detach().float() for k, v in own.items()}
            self.ema = {k: shard_like(ema[k].float(), p).clone() for k, p in own.items()}
        self.step = int(saved["step"])
        if self._own_checkpoint(directory):   # this state is on disk in this run's own folder
            self._checkpointed_step = self.step
        if hasattr(self.sample_batch, "load_state_dict"):
            self._restore_stream(directory)
        if self.log_path is not None and self.log_path.exists() and self.world.is_main:
            try:
                _write_log(self.log_path, [r for r in read_log(self.log_path)
                                           if str(r.get("step", "")).isdigit() and int(r["step"]) <= self.step])
            except OSError as e:
                raise TrainingError(f"'{self.log_path}' could not be rewritten to end at the checkpoint's step "
                                    f"{self.step} ({e.strerror or e}); close the program holding it open (a "
                                    "spreadsheet locks it on Windows) and run again.") from None
        barrier(self.world)

    def _check_same_draws(self, meta: dict, directory: Path):
        """A step's clips and randomness are drawn from (seed, step) over the dataset's clips: resumed
        with another seed or another number of clips, the steps after the checkpoint would be another
        run's, continued without a word."""
        seed = meta.get("config", {}).get("seed")
        if seed is not None and seed != self.config.seed:
            raise TrainingError(f"checkpoint '{directory.name}' was trained with seed {seed}, this run has "
                                f"{self.config.seed}; a step's clips and noise are drawn from the seed, so resume with "
                                f"seed {seed} (train.seed), or start a fresh output folder.")
        clips, ours = meta.get("clips"), clip_count(self.sample_batch)
        if clips is not None and ours is not None and clips != ours:
            raise TrainingError(f"checkpoint '{directory.name}' drew its steps from {clips} clips, this run has {ours}; "
                                "the clips changed (added, removed or skipped), so the steps would draw other clips. "
                                "Resume with the same clips, or start a fresh output folder.")

    def _sharded_optimizer_state(self, optimizer, state: dict) -> dict:
        """A checkpoint's whole optimizer state cut to this rank's shards of the parameters (FSDP); as
        it is otherwise. Its parameter indices follow the optimizer's parameter order."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not any(is_sharded(p) for p in params):
            return state
        moments = {index: {k: shard_like(v, params[int(index)]) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                           for k, v in values.items()}
                   for index, values in state["state"].items()}
        return {**state, "state": moments}

    def _restore_stream(self, directory: Path):
        """Every rank's position in streamed data, from the checkpoint's data.json (written by rank 0)."""
        states = None
        if self.world.is_main:
            path = directory / "data.json"
            states = json.loads(path.read_text()) if path.is_file() else None
            if states is None or len(states) != self.world.size:   # every rank learns of it, so every rank stops
                states = [{"ranks": None if states is None else len(states)}] * self.world.size
        state = scatter_from_main(states, self.world)
        if state["ranks"] is None:
            raise TrainingError(f"checkpoint '{directory.name}' holds no position in streamed data (its run read a "
                                "data folder); continue it with the same data, or start a fresh output folder.")
        if state["ranks"] != self.world.size:
            raise TrainingError(f"checkpoint '{directory.name}' holds the streamed data positions of {state['ranks']} "
                                f"rank(s), this run has {self.world.size}; resume on as many ranks.")
        self.sample_batch.load_state_dict(state, self.step)


def clip_count(batches) -> int | None:
    """How many clips a run's steps draw from: a dataset's (StepBatches); None for streamed data, whose
    position is kept instead."""
    dataset = getattr(batches, "dataset", None)
    return len(dataset) if dataset is not None else None


RUN_LOCK = ".run.lock"


@contextmanager
def only_run_in(output_dir: Path, world: World):
    """Rank 0 holds an exclusive lock on `output_dir` while the run lasts: a second run started on the
    same folder (a job queued again while the first still runs) is refused on every rank, instead
    of both writing its checkpoints and loss.csv. Where the system has no advisory locks (Windows),
    the folder is not locked."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    handle, taken = None, False
    if world.is_main and fcntl is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(output_dir / RUN_LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            taken = True
        except OSError as e:   # a filesystem without locks (NFS without lockd, some FUSE and Lustre mounts)
            log.warning("the output folder '%s' cannot be locked (%s); nothing stops a second run on it.",
                        output_dir, e.strerror or e)
    try:
        if ranks_where(taken, world):
            raise TrainingError(f"'{output_dir}' is in use by another training run (it holds {RUN_LOCK} there); let "
                                f"it finish or stop it, or give this run another output folder. (A lock a crashed "
                                f"node held on a network filesystem can outlive it: with no run on the folder, delete "
                                f"{RUN_LOCK}.)")
        yield
    finally:
        if handle is not None:
            handle.close()   # closing releases the lock


def synced(directory: Path, files: bool = True):
    """`directory`'s files and the folder itself written through to the disk: a checkpoint renamed
    into place after this holds whole files even after a crash or power loss."""
    for path in directory.iterdir() if files else ():
        fd = os.open(path, os.O_RDWR)   # Windows flushes only a handle open for writing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if os.name != "nt":   # a folder cannot be opened for fsync on Windows
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:   # some network and FUSE filesystems sync no folder: the files are synced
            pass
        finally:
            os.close(fd)


@contextmanager
def readable(directory: Path, name: str):
    """A checkpoint file that cannot be read, named with what to do: a checkpoint cut short (a crash
    while it was written, before writes were synced) is refused, not resumed from in part."""
    try:
        yield
    except TrainingError:
        raise
    except Exception as e:
        names = [p.name for p in checkpoints_in(directory.parent)]
        earlier = names[:names.index(directory.name)] if directory.name in names else names
        then = f"resume from '{earlier[-1]}'" if earlier else "start from the beginning"
        raise TrainingError(f"checkpoint '{directory.name}': {name} cannot be read ({type(e).__name__}: {e}); it was cut "
                            f"short or damaged. Delete the folder '{directory.name}' to {then}.") from None


CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoints_in(output_dir: str | Path) -> list[Path]:
    """The trainer's checkpoint folders in `output_dir`, oldest step first: named exactly
    checkpoint-<step> (a user's 'checkpoint-0000400-backup' is neither pruned nor resumed from; a
    '.tmp' left by a crash mid-write is not one), ordered by the step's number, not its text."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.is_dir() and (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints_in(output_dir)
    return found[-1] if found else None


def read_checkpoint_metadata(path: str | Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(CHECKPOINT_METADATA_KEY)
    if raw is None:
        raise TrainingError(f"'{path}' has no '{CHECKPOINT_METADATA_KEY}' metadata: not a checkpoint of this trainer.")
    return json.loads(raw)


def read_log(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _header(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


def _write_log(path: Path, rows: list[dict]):
    """loss.csv written whole beside itself, then renamed onto it: a crash mid-write leaves the old log."""
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
