"""README command 1 (devtools/demo.sh) as a user runs it: it prints the path of a playable mp4."""

import json
import subprocess

import av

from devtools.paths import REPO_ROOT


def test_demo_command_writes_a_playable_mp4():
    done = subprocess.run([str(REPO_ROOT / "devtools" / "demo.sh")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    path = done.stdout.strip().splitlines()[-1]
    assert path.endswith(".mp4")
    prompt = json.loads((REPO_ROOT / "workflows" / "demo_api.json").read_text())
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 128)
    assert len(frames) == prompt["4"]["inputs"]["batch_size"]
    assert "wiring demo" in done.stderr or "Random weights" in done.stderr
