"""The validation video of a training run (monitor.validate_every), as train.py logs it: read back
from the TensorBoard event file with TensorBoard's own reader, at the expected steps and shape, and
training unchanged by it (the same losses and weights as a run without it)."""

import io

import pytest
from PIL import Image, ImageSequence
from safetensors.torch import load_file

from tests.host import test_training_cli as cli
from videoldm_core.training.monitor import frame_ms

config, run_cli = cli.config, cli.run_cli


def validated(cfg, every, **validation):
    cfg["monitor"] = {"tensorboard": True, "validate_every": every, "validation": {"steps": 2, "seed": 3, **validation}}
    return cfg


def videos(output):
    """[(step, height, width, frames, milliseconds)] of the run's validation videos."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    found = []
    for event in events.Images("validation/video") if "validation/video" in events.Tags()["images"] else []:
        gif = Image.open(io.BytesIO(event.encoded_image_string))
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(gif)]
        found.append((event.step, event.height, event.width, len(durations), sum(durations)))
    return found


def csv_rows(output):
    """loss.csv without its timing column."""
    header, *rows = (output / "loss.csv").read_text().splitlines()
    keep = [i for i, name in enumerate(header.split(",")) if name != "seconds"]
    return [[row.split(",")[i] for i in keep] for row in rows]


def test_a_video_every_n_steps_beside_the_scalars_and_the_same_training_as_without(setup, tmp_path):
    plain = config(setup, tmp_path / "plain", steps=4, batch_size=1)
    plain["monitor"] = {"tensorboard": True}
    video = validated(config(setup, tmp_path / "video", steps=4, batch_size=1), 2,
                      prompts=["a red square", "a blue circle"], frames=4)
    for name, cfg in (("plain", plain), ("video", video)):
        run = run_cli(setup, cfg, name)
        assert run.returncode == 0, run.stderr[-3000:]
    assert "step 2: validation video, 2 clip(s) of 4 frames" in run.stdout
    # two 64 px clips side by side, 4 frames at data.fps 15, at steps 2 and 4
    assert videos(tmp_path / "video") == [(2, 64, 128, 4, 4 * frame_ms(15)), (4, 64, 128, 4, 4 * frame_ms(15))]
    assert videos(tmp_path / "plain") == []
    # the global random state, the weights and the UNet training sees are as they were
    assert csv_rows(tmp_path / "video") == csv_rows(tmp_path / "plain")
    a, b = (load_file(str(tmp_path / run / "adapter.safetensors")) for run in ("plain", "video"))
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.train_long   # three train.py runs; by default the streamed test below samples mode prediction
@pytest.mark.parametrize("mode, frames, sampled, rate", [("prediction", 4, 4, 15), ("interpolation", 5, 5, 15),
                                                         ("upscaler", 4, 4, 15)])
def test_each_mode_samples_from_the_datas_first_clip(setup, tmp_path, mode, frames, sampled, rate):
    """Prediction: the clip's first 2 frames given, 4 in all (EMA weights); interpolation: keyframes 0
    and 4 of a 5-frame clip, 4·2 − 3 = 5 frames at the clips' rate again; upscaler: the clip's 16 px
    low-res frames, 4x (the x4 demo bundle)."""
    cfg = validated(config(setup, tmp_path / mode, steps=2, batch_size=1, ema_decay=0.9), 2)
    cfg["mode"] = mode
    cfg["data"].update(frames=frames, cache=str(tmp_path / "cache"))
    cfg["adapter"] = {"patch": 8} if mode == "upscaler" else {"context_width": 16, "regimes": [0]}
    if mode == "upscaler":
        cfg["checkpoint"] = str(setup / "base" / "models" / "checkpoints" / "videoldm_demo_x4.safetensors")
    run = run_cli(setup, cfg, mode)
    assert run.returncode == 0, run.stderr[-3000:]
    assert videos(tmp_path / mode) == [(2, 64, 64, sampled, sampled * frame_ms(rate))]


def test_streamed_data_gives_the_prediction_context_without_moving_the_stream(setup, tmp_path):
    """The first shard's clip is read on its own for the context frames; the training stream's
    checkpointed position is that of a run without validation (2 steps of 1 clip)."""
    import json

    from videoldm_core.training.shards import write_shards

    write_shards(setup / "clips", str(tmp_path / "shards" / "c-%03d.tar"), clips_per_shard=2)
    cfg = validated(config(setup, tmp_path / "out", steps=2, batch_size=1), 1, prompts=["shapes"])
    del cfg["data"]["folder"], cfg["data"]["cache"]
    cfg["data"].update(shards=str(tmp_path / "shards" / "c-{000..001}.tar"), workers=1)
    cfg.update(mode="prediction", adapter={"context_width": 16})
    run = run_cli(setup, cfg, "streamed")
    assert run.returncode == 0, run.stderr[-3000:]
    assert videos(tmp_path / "out") == [(1, 64, 64, 4, 4 * frame_ms(15)), (2, 64, 64, 4, 4 * frame_ms(15))]
    [state] = json.loads((tmp_path / "out" / "checkpoint-0000002" / "data.json").read_text())
    assert state["step"] == 2 and state["positions"] == {"0": [0, 2]}
