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


def test_a_validation_video_is_an_animated_image_summary_at_its_step(tmp_path):
    """What add_video writes (a GIF in an image summary), read back: the N clips side by side, T frames
    at the given rate."""
    import io

    import torch
    from PIL import Image, ImageSequence
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from videoldm_core.training.monitor import frame_ms

    board = TensorBoardLog(tmp_path)
    videos = torch.rand(2, 5, 16, 24, 3, generator=torch.Generator().manual_seed(0))
    board.video("validation/video", videos, step=10, fps=8)
    board.video("validation/video", videos.flip(1), step=20, fps=8)
    board.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    written = events.Images("validation/video")
    assert [(e.step, e.height, e.width) for e in written] == [(10, 16, 48), (20, 16, 48)]
    gif = Image.open(io.BytesIO(written[0].encoded_image_string))
    frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 5 and gif.info["loop"] == 0 and gif.info["duration"] == frame_ms(8) == 120
    first = torch.frombuffer(bytearray(frames[0].tobytes()), dtype=torch.uint8).reshape(16, 48, 3).float() / 255
    side_by_side = torch.cat([videos[0, 0], videos[1, 0]], dim=1)
    assert (first - side_by_side).abs().mean() < 0.05   # a 256-colour palette's rounding
