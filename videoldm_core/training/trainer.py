"""The training loop: AdamW over the trainable phases only, linear warm-up, gradient clipping,
mixed precision, EMA weights, checkpoints with exact resume, seeded determinism, a loss CSV, and
DistributedDataParallel under torchrun.

Exact resume: a step's batch and randomness are functions of (seed, step) alone (see batches.py),
and a checkpoint holds the trainable weights, optimiser and grad-scaler state, EMA weights and the
step, so continuing from step k reproduces the uninterrupted run's losses bit for bit on the same
machine.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..state_dict import check_weights
from .distributed import World, barrier, gather_to_main, init_world, mean_over_ranks, scatter_from_main
from .objective import Phase, TrainingError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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
    ema_decay: float | None = None    # e.g. 0.999: keep EMA weights, exported instead of the raw ones
    seed: int = 0
    checkpoint_every: int = 0         # steps; 0: only at the end
    keep_checkpoints: int = 2
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
        self.betas = tuple(self.betas)

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
        for phase in self.phases:
            if not any(p.requires_grad for p in phase.parameters()):
                raise TrainingError(f"phase '{phase.name}' has no trainable parameters.")
        self.modules = [self._wrap(phase) for phase in self.phases]
        self.optimizers = [torch.optim.AdamW([p for p in phase.parameters() if p.requires_grad], lr=config.lr,
                                             betas=config.betas, weight_decay=config.weight_decay)
                           for phase in self.phases]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.ema = {k: v.detach().clone().float() for k, v in self.trainable_state().items()} if config.ema_decay else None
        self.history: list[dict] = []

    def _wrap(self, phase: nn.Module) -> nn.Module:
        if not self.world.distributed:
            return phase
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # gradients live in the all-reduce buckets (no second copy): 4 bytes per trainable parameter less
        return nn.parallel.DistributedDataParallel(phase, device_ids=ids, find_unused_parameters=True,
                                                   gradient_as_bucket_view=True)

    # --- state -----------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"{phase.name}.{n}": p for phase in self.phases for n, p in phase.named_parameters() if p.requires_grad}

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The weights to export: EMA weights when kept, else the current ones."""
        if self.ema is None:
            return {k: v.detach() for k, v in self.trainable_state().items()}
        return {k: v.to(p.dtype) for (k, v), p in zip(self.ema.items(), self.trainable_state().values())}

    def phase_state(self, phase_name: str, ema: bool = True) -> dict[str, torch.Tensor]:
        """One phase's weights with the phase prefix removed (e.g. the adapter's own state dict)."""
        state = self.ema_state() if ema else {k: v.detach() for k, v in self.trainable_state().items()}
        prefix = phase_name + "."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

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
            if not torch.isfinite(loss):
                raise TrainingError(f"step {step + 1}: phase '{phase.name}' loss is {loss.item()}; lower the learning "
                                    "rate or use bf16/fp32 precision.")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            params = [p for p in phase.parameters() if p.requires_grad]
            if self.scaler:
                self.scaler.unscale_(optimizer)
            if config.grad_clip is not None:
                row[f"{phase.name}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
            if self.scaler:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
            for key, value in logs.items():
                row[f"{phase.name}/{key}"] = mean_over_ranks(float(value), self.world)
        if self.scaler:
            self.scaler.update()
        if self.ema is not None:
            with torch.no_grad():
                for (key, average), p in zip(self.ema.items(), self.trainable_state().values()):
                    average.lerp_(p.detach().float(), 1.0 - config.ema_decay)
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
            self.save_checkpoint()
        return finished

    # --- files -----------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / "loss.csv"

    def _log(self, row: dict):
        """Append to loss.csv (rank 0); rewritten only when a new column appears."""
        if self.log_path is None or not self.world.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        header = _header(self.log_path)
        if header is not None and set(row) <= set(header):
            with open(self.log_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
        else:
            _write_log(self.log_path, (read_log(self.log_path) if header else []) + [row])

    def checkpoint_dir(self, step: int | None = None) -> Path:
        if self.output_dir is None:
            raise TrainingError("no output folder was given, so there is nowhere to write checkpoints.")
        return self.output_dir / f"checkpoint-{self.step if step is None else step:07d}"

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Rank 0 writes trainable.safetensors (+ ema.safetensors) and optimizer.pt; all ranks wait."""
        directory = Path(directory) if directory is not None else self.checkpoint_dir()
        stream = getattr(self.sample_batch, "state_dict", None)   # streamed data: each rank's position in it
        streams = gather_to_main({"ranks": self.world.size, **stream()}, self.world) if stream else None
        if self.world.is_main:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta = {CHECKPOINT_METADATA_KEY: json.dumps({"identity": self.identity, "step": self.step,
                                                         "config": asdict(self.config)}, default=str)}
            save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable_state().items()},
                      str(tmp / "trainable.safetensors"), metadata=meta)
            if self.ema is not None:
                save_file({k: v.contiguous().cpu() for k, v in self.ema.items()}, str(tmp / "ema.safetensors"), metadata=meta)
            torch.save({"step": self.step, "optimizers": [o.state_dict() for o in self.optimizers],
                        "scaler": self.scaler.state_dict() if self.scaler else None}, tmp / "optimizer.pt")
            if streams is not None:
                (tmp / "data.json").write_text(json.dumps(streams, indent=1))
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
            self._prune_checkpoints()
        barrier(self.world)
        return directory

    def _prune_checkpoints(self):
        if self.output_dir is None or self.config.keep_checkpoints < 1:
            return
        found = sorted(self.output_dir.glob("checkpoint-*[0-9]"))
        for old in found[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, directory: str | Path):
        """Continue from a checkpoint of the same identity (spec, mode, ...); the loss log is cut back
        to its step so the resumed rows replace the ones after it."""
        directory = Path(directory)
        weights = directory / "trainable.safetensors"
        if not weights.is_file():
            raise TrainingError(f"'{directory}' is not a training checkpoint: expected trainable.safetensors in it.")
        meta = read_checkpoint_metadata(weights)
        if meta.get("identity") != json.loads(json.dumps(self.identity, default=str)):
            theirs, ours = meta.get("identity", {}), json.loads(json.dumps(self.identity, default=str))
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise TrainingError(f"checkpoint '{directory.name}' was written for another training setup: it differs in "
                                f"{differ} (e.g. {differ[0]}: checkpoint {theirs.get(differ[0])!r}, this run "
                                f"{ours.get(differ[0])!r}). Resume with the same adapter spec and mode, or start fresh.")
        state = load_file(str(weights))
        own = self.trainable_state()
        check_weights(own, state, f"checkpoint '{directory.name}' does not fit the trainable weights", TrainingError)
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(state[k])
        saved = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
        for optimizer, optimizer_state in zip(self.optimizers, saved["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            ema_file = directory / "ema.safetensors"
            ema = load_file(str(ema_file)) if ema_file.is_file() else {k: v.detach().float() for k, v in own.items()}
            self.ema = {k: ema[k].float().clone() for k in own}
        self.step = int(saved["step"])
        if hasattr(self.sample_batch, "load_state_dict"):
            self._restore_stream(directory)
        if self.log_path is not None and self.log_path.exists() and self.world.is_main:
            _write_log(self.log_path, [r for r in read_log(self.log_path) if int(r["step"]) <= self.step])
        barrier(self.world)


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


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = sorted(Path(output_dir).glob("checkpoint-*[0-9]"))
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
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["step"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
