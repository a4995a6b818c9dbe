"""TensorBoard scalars of a training run, beside loss.csv (which stays the record): every value of
a step's row (each phase's losses and gradient norm, the learning rate), the throughput in clips
per second of the global batch, and for streamed data the share of the step spent waiting for
clips (time in the data pipeline over time in the pipeline and the step). Written by rank 0 to
`<output>/tensorboard`; `tensorboard --logdir <output>` shows them."""

from __future__ import annotations

from pathlib import Path


class TensorBoardLog:
    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter   # needs the training extra's tensorboard

        self.writer = SummaryWriter(str(folder))
        self._waited = 0.0

    def step(self, row: dict, global_batch: int, waited_in_all: float | None = None) -> dict:
        """Writes the step's scalars; returns them by tag."""
        step, seconds = int(row["step"]), float(row["seconds"])
        scalars = {(k if "/" in k else f"train/{k}"): float(v) for k, v in row.items() if k not in ("step", "seconds")}
        waited = 0.0
        if waited_in_all is not None:
            waited, self._waited = waited_in_all - self._waited, waited_in_all
            scalars["data/wait_share"] = waited / (waited + seconds) if waited + seconds > 0 else 0.0
        scalars["train/clips_per_s"] = global_batch / (waited + seconds) if waited + seconds > 0 else 0.0
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        return scalars

    def close(self):
        self.writer.close()
