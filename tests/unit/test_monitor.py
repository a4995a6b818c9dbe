"""TensorBoard scalars of a training run: each step's row, clips/s and the data-wait share, read
back from the event file with TensorBoard's own reader."""

import pytest

from videoldm_core.training.monitor import TensorBoardLog


def test_each_steps_scalars_are_written_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = TensorBoardLog(tmp_path)
    rows = [{"step": 1, "lr": 1e-4, "adapter/loss": 0.5, "adapter/grad_norm": 2.0, "seconds": 1.5},
            {"step": 2, "lr": 2e-4, "adapter/loss": 0.25, "adapter/grad_norm": 1.0, "seconds": 0.5}]
    written = [board.step(rows[0], global_batch=4, waited_in_all=0.5), board.step(rows[1], global_batch=4, waited_in_all=2.0)]
    board.close()
    assert written[0]["data/wait_share"] == pytest.approx(0.25) and written[0]["train/clips_per_s"] == pytest.approx(2.0)
    assert written[1]["data/wait_share"] == pytest.approx(0.75) and written[1]["train/clips_per_s"] == pytest.approx(2.0)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/lr", "adapter/loss", "adapter/grad_norm", "data/wait_share",
                                             "train/clips_per_s"}
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("adapter/loss")] == [(1, 0.5), (2, 0.25)]
