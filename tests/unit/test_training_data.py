"""Training data: the moving-shapes generator, reading clips from folders, the latent cache, and
the batch order that ranks and resumed runs share."""

import json
import logging
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from videoldm_core.training.data import ClipSpec, VideoFolder, discover, read_frames
from videoldm_core.training.latent_cache import LatentShards, build_latent_cache, cache_key
from videoldm_core.training.objective import TrainingError
from devtools.synthetic_data import scene_seed, write_dataset, write_mp4
from videoldm_core.moving_shapes import moving_shapes_clip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mp4_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp4")
    write_dataset(folder, count=2, seed=5, frames=32, height=48, width=64, fps=30.0, as_="mp4")
    return folder


def encode_stub(calls):
    """A stand-in autoencoder: 8x average pooling to 3 channels + their mean, counting its calls."""
    def encode(frames):
        calls.append(frames.shape)
        z = F.avg_pool2d(frames, 8)
        return torch.cat([z, z.mean(1, keepdim=True)], dim=1)
    return encode


# -- moving shapes --------------------------------------------------------------------------------

def test_same_seed_gives_the_same_clip_and_another_seed_another():
    a, b, c = (moving_shapes_clip(s, 8, 32, 32) for s in (3, 3, 4))
    assert torch.equal(a.frames, b.frames) and a.caption == b.caption
    assert (a.frames - c.frames).abs().mean() > 0.05
    assert a.frames.shape == (8, 3, 32, 32) and a.frames.dtype == torch.float32
    assert -1 <= a.frames.min() and a.frames.max() <= 1 and a.frames.std() > 0.1


def test_caption_names_each_shape_and_tracks_stay_inside_the_frame():
    clip = moving_shapes_clip(11, 60, 40, 56, fps=10.0)
    assert 1 <= len(clip.tracks) <= 3 and clip.caption.count(" moving ") == len(clip.tracks)
    for track in clip.tracks:
        assert track.kind in clip.caption
        x, y = track.centre[:, 0], track.centre[:, 1]
        assert x.min() >= track.size - 1e-4 and x.max() <= 56 - track.size + 1e-4
        assert y.min() >= track.size - 1e-4 and y.max() <= 40 - track.size + 1e-4
        assert track.angle.shape == (60,) and track.colour.shape == (60, 3)
        steps = (track.centre[1:] - track.centre[:-1]).norm(dim=-1)  # constant speed except across a bounce
        assert steps.median() > 0.5 and ((steps - steps.median()).abs() < 1e-3).float().mean() > 0.8
        assert (track.colour[1:] - track.colour[:-1]).abs().max() < 0.1  # the colour changes smoothly


def test_quarter_fps_render_is_every_fourth_frame():
    fast = moving_shapes_clip(7, 16, 32, 48, fps=30.0)
    slow = moving_shapes_clip(7, 4, 32, 48, fps=7.5)
    assert torch.equal(slow.frames, fast.frames[::4])
    assert torch.equal(slow.tracks[0].centre, fast.tracks[0].centre[::4])
    assert not torch.equal(slow.frames, fast.frames[:4])  # the shapes do move


def test_scaled_render_is_the_same_scene_with_centres_times_four():
    base = moving_shapes_clip(2, 4, 24, 32)
    big = moving_shapes_clip(2, 4, 24, 32, scale=4)
    assert big.frames.shape == (4, 3, 96, 128) and big.caption == base.caption
    for small, large in zip(base.tracks, big.tracks):
        assert torch.allclose(large.centre, small.centre * 4) and large.size == pytest.approx(small.size * 4)
        assert torch.equal(large.angle, small.angle) and torch.equal(large.colour, small.colour)
    assert (F.avg_pool2d(big.frames, 4) - base.frames).abs().mean() < 0.01


# -- reading folders ------------------------------------------------------------------------------

def test_mp4_round_trip_at_source_fps(mp4_folder):
    data = VideoFolder(mp4_folder, ClipSpec(frames=16, fps=None, height=48, width=64))
    assert len(data) == 2 and [e.name for e in data.entries] == ["clip_0000.mp4", "clip_0001.mp4"]
    item = data[1]
    reference = moving_shapes_clip(scene_seed(5, 1), 16, 48, 64, fps=30.0)
    assert item["frames"].shape == (16, 3, 48, 64) and item["frames"].dtype == torch.float32
    assert -1 <= item["frames"].min() and item["frames"].max() <= 1
    assert (item["frames"] - reference.frames).abs().mean() < 0.1  # lossy H.264
    assert item["caption"] == reference.caption and item["name"] == "clip_0001.mp4"


def test_mp4_at_quarter_fps_takes_every_fourth_frame(mp4_folder):
    data = VideoFolder(mp4_folder, ClipSpec(frames=8, fps=7.5, height=48, width=64))
    frames = data[0]["frames"]
    reference = moving_shapes_clip(scene_seed(5, 0), 32, 48, 64, fps=30.0).frames
    assert frames.shape == (8, 3, 48, 64)
    error = [(frames[k] - reference[4 * k]).abs().mean().item() for k in range(8)]
    off_by_one = [(frames[k] - reference[4 * k + 1]).abs().mean().item() for k in range(7)]
    assert max(error) < 0.1 and max(error) < min(off_by_one)


def test_frames_deep_in_a_video_are_found_after_a_seek(tmp_path):
    reference = moving_shapes_clip(1, 90, 48, 64).frames
    write_mp4(tmp_path / "long.mp4", reference, 30.0)
    data = VideoFolder(tmp_path, ClipSpec(frames=8, fps=None, height=48, width=64))
    wanted = [45, 49, 49, 60, 89]  # past 1 s the decoder seeks to a keyframe first; repeats and the last frame too
    frames = read_frames(data.entries[0], wanted, data.probes[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
    error = {shift: (frames - reference[[min(i + shift, 89) for i in wanted]]).abs().mean().item() for shift in (-1, 0, 1)}
    assert error[0] < 0.05 and error[0] < min(error[-1], error[1])
    assert torch.equal(frames[1], frames[2])


def test_gif_without_a_frame_count_is_counted_and_timed(tmp_path):
    from PIL import Image

    from devtools.synthetic_data import to_uint8
    reference = moving_shapes_clip(4, 20, 32, 32).frames
    images = [Image.fromarray(a) for a in to_uint8(reference)]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:], duration=40, loop=0)
    data = VideoFolder(tmp_path, ClipSpec(frames=10, fps=12.5, height=32, width=32))
    assert (data.probes[0].num_frames, data.probes[0].fps) == (20, 25.0)
    assert (data[0]["frames"] - reference[::2]).abs().mean() < 0.05


def test_resize_covers_and_random_crop_is_seeded(mp4_folder):
    spec = ClipSpec(frames=4, fps=None, height=32, width=32, crop="random", start="random")
    a, b = VideoFolder(mp4_folder, spec, seed=1), VideoFolder(mp4_folder, spec, seed=1)
    assert a[0]["frames"].shape == (4, 3, 32, 32) and torch.equal(a[0]["frames"], b[0]["frames"])
    centre = VideoFolder(mp4_folder, ClipSpec(frames=4, fps=None, height=32, width=32))[0]["frames"]
    reference = F.interpolate(moving_shapes_clip(scene_seed(5, 0), 4, 48, 64).frames, size=(32, 43), mode="bilinear",
                              antialias=True)[..., 5:37]  # 48x64 -> 32x43, centre 32 columns
    assert (centre - reference).abs().mean() < 0.1


def test_frame_folder_round_trip_is_exact_to_8_bits(tmp_path):
    captions = write_dataset(tmp_path, count=1, seed=9, frames=12, height=30, width=40, fps=24.0, as_="frames")
    assert sorted(os.listdir(tmp_path / "clip_0000"))[:2] == ["00000.png", "00001.png"]
    data = VideoFolder(tmp_path, ClipSpec(frames=6, fps=12.0, height=30, width=40), source_fps=24.0)
    reference = moving_shapes_clip(scene_seed(9, 0), 12, 30, 40, fps=24.0)
    item = data[0]
    assert (item["frames"] - reference.frames[::2]).abs().max() < 1 / 127
    assert item["caption"] == captions["clip_0000"] == reference.caption


def test_sidecar_caption_and_captions_json_by_stem(tmp_path):
    clip = moving_shapes_clip(0, 4, 16, 16)
    for name in ("a", "b", "c"):
        write_mp4(tmp_path / f"{name}.mp4", clip.frames, 30.0)
    (tmp_path / "a.txt").write_text("a sidecar caption\n")
    (tmp_path / "captions.json").write_text(json.dumps({"b": "by stem"}))
    assert [(e.name, e.caption) for e in discover(tmp_path)] == [
        ("a.mp4", "a sidecar caption"), ("b.mp4", "by stem"), ("c.mp4", None)]
    # UTF-8 with a byte-order mark (Notepad, PowerShell 5): the JSON was refused, the mark was captioned
    (tmp_path / "a.txt").write_text("\ufeffa sidecar caption\n", encoding="utf-8")
    (tmp_path / "captions.json").write_text("\ufeff" + json.dumps({"b": "by stem"}), encoding="utf-8")
    assert [(e.name, e.caption) for e in discover(tmp_path)] == [
        ("a.mp4", "a sidecar caption"), ("b.mp4", "by stem"), ("c.mp4", None)]


def test_missing_and_empty_folders_name_the_folder_and_the_extensions(tmp_path):
    with pytest.raises(TrainingError, match=r"'.*nowhere' does not exist; expected a folder of videos \(\.mp4"):
        VideoFolder(tmp_path / "nowhere", ClipSpec(4, None, 16, 16))
    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(TrainingError) as info:
        VideoFolder(tmp_path, ClipSpec(4, None, 16, 16))
    message = str(info.value)
    assert str(tmp_path) in message and ".webm" in message and ".png" in message and "notes.doc" in message


def test_unreadable_file_is_named_when_stopping(tmp_path):
    write_mp4(tmp_path / "good.mp4", moving_shapes_clip(0, 8, 16, 16).frames, 30.0)
    (tmp_path / "fake.mp4").write_text("this is not a video")
    with pytest.raises(TrainingError, match=r"(?s)1 of 2 clips .* cannot be used:\n  'fake.mp4': unreadable \(InvalidDataError.*on_bad='skip'"):
        VideoFolder(tmp_path, ClipSpec(4, None, 16, 16))


def test_unreadable_file_is_skipped_with_a_warning(tmp_path, caplog):
    write_mp4(tmp_path / "good.mp4", moving_shapes_clip(0, 8, 16, 16).frames, 30.0)
    (tmp_path / "fake.mp4").write_text("this is not a video")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "00000.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        data = VideoFolder(tmp_path, ClipSpec(4, None, 16, 16), on_bad="skip")
    assert len(data) == 1 and data[0]["name"] == "good.mp4"
    assert "skipping 2 of 3" in caplog.text and "'fake.mp4'" in caplog.text and "'frames'" in caplog.text
    os.remove(tmp_path / "good.mp4")
    with pytest.raises(TrainingError, match="No clip is usable"):
        VideoFolder(tmp_path, ClipSpec(4, None, 16, 16), on_bad="skip")


def test_too_short_clip_error_states_needed_and_found_durations(tmp_path):
    write_mp4(tmp_path / "a.mp4", moving_shapes_clip(0, 30, 16, 16).frames, 30.0)
    with pytest.raises(TrainingError) as info:
        VideoFolder(tmp_path, ClipSpec(frames=16, fps=7.5, height=16, width=16))
    assert "too short: 16 frames at 7.5 fps need 61 of its frames at 30 fps, 'a.mp4' has 30 (1.00 s)" in str(info.value)
    assert len(VideoFolder(tmp_path, ClipSpec(frames=8, fps=7.5, height=16, width=16))) == 1  # frames 0, 4, ..., 28


def test_every_start_whose_last_frame_the_source_holds_is_drawn_and_no_index_passes_its_end():
    """Frame k of a clip is source frame start + round(k · source fps / fps): a source of exactly
    (T − 1)·r + 1 frames holds a clip, the last such start is drawn, and a slower source repeats
    frames without clamping the clip's end onto its last frame."""
    import random
    from videoldm_core.training.data import Probe, frame_indices

    down = ClipSpec(4, 15.0, 16, 16, start="random")
    starts = {frame_indices(down, Probe(12, 30.0, 16, 16), random.Random(seed))[0] for seed in range(200)}
    assert starts == set(range(6))   # start 5 gives 5, 7, 9, 11
    assert frame_indices(down, Probe(7, 30.0, 16, 16)) == [0, 2, 4, 6]
    assert frame_indices(down, Probe(6, 30.0, 16, 16)) is None
    up = ClipSpec(4, 30.0, 16, 16, start="random")
    for seed in range(50):
        indices = frame_indices(up, Probe(10, 15.0, 16, 16), random.Random(seed))
        assert indices[-1] <= 9 and [b - a for a, b in zip(indices, indices[1:])] == [1, 0, 1]


def test_sources_slower_than_the_rate_read_are_named_in_a_warning(tmp_path, caplog):
    write_mp4(tmp_path / "slow.mp4", moving_shapes_clip(0, 12, 16, 16).frames, 15.0)
    with caplog.at_level(logging.WARNING):
        VideoFolder(tmp_path, ClipSpec(frames=4, fps=30.0, height=16, width=16))
    assert "1 of 1 clips in" in caplog.text and "run slower than the 30 fps read from them, so their clips repeat " \
        "frames" in caplog.text and "'slow.mp4' at 15 fps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        VideoFolder(tmp_path, ClipSpec(frames=4, fps=15.0, height=16, width=16))
    assert "repeat frames" not in caplog.text
    from videoldm_core.training.data import Probe, frame_indices   # NTSC 29.97 read at 30: no frame repeats
    assert len(set(frame_indices(ClipSpec(16, 30.0, 16, 16), Probe(100, 30000 / 1001, 16, 16)))) == 16


def test_a_clip_that_would_decode_past_the_memory_limit_is_refused_when_probed(tmp_path, monkeypatch):
    """Known from the probe (a video's stated frame size, an image's header), before a clip is read."""
    import videoldm_core.training.data as data

    write_mp4(tmp_path / "big.mp4", moving_shapes_clip(0, 8, 64, 64).frames, 30.0)
    monkeypatch.setenv("VIDEOLDM_MAX_OUTPUT_GIB", str(0.4 / 1024))   # 0.4 MiB
    with pytest.raises(TrainingError, match=r"'big.mp4': reading a clip of 8 frames of 64x64 \(cropped to 16x16\) "
                                            r"needs 0\.5 MiB, above the Video LDM pack's limit of 0\.4 MiB "
                                            r"\(VIDEOLDM_MAX_OUTPUT_GIB\)"):
        VideoFolder(tmp_path, ClipSpec(8, None, 16, 16))
    monkeypatch.delenv("VIDEOLDM_MAX_OUTPUT_GIB")
    assert len(VideoFolder(tmp_path, ClipSpec(8, None, 16, 16))) == 1
    monkeypatch.setattr(data, "MAX_FRAME_PIXELS", 63 * 64)   # a frame size no training frame has
    with pytest.raises(TrainingError, match=r"'big.mp4': unreadable \(TrainingError: its frames are 64x64, more than "
                                            r"the 4032 pixels"):
        VideoFolder(tmp_path, ClipSpec(8, None, 16, 16))


def test_thin_frames_are_sized_as_they_are_resized(tmp_path):
    """A 4096x1 frame covers a 256x256 clip only at 1048576x256: the memory check sizes the clip as
    `fit` resizes it (48 GiB here), not by the larger of the two sizes per side."""
    from PIL import Image

    folder = tmp_path / "thin"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (4096, 1)).save(folder / f"{i:05d}.png")
    with pytest.raises(TrainingError, match=r"'thin': reading a clip of 8 frames of 4096x1 \(cropped to 256x256\) "
                                            r"needs 48\.\d+ GiB"):
        VideoFolder(tmp_path, ClipSpec(8, None, 256, 256))


def test_a_frame_larger_than_its_probe_is_refused_before_it_is_converted(tmp_path):
    from PIL import Image

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i:05d}.png")
    data = VideoFolder(tmp_path, ClipSpec(4, None, 16, 16))
    Image.new("RGB", (64, 64)).save(folder / "00002.png")   # replaced after the probe
    with pytest.raises(TrainingError, match=r"'clip' has a frame of 64x64, larger than the 16x16 it stated"):
        data[0]


def test_a_frame_gone_after_the_probe_is_named_without_the_servers_path(tmp_path):
    """The clip is named; the OSError's own text, which holds the absolute path, is not passed on."""
    from PIL import Image

    folder = tmp_path / "walk"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16)).save(folder / f"{i:05d}.png")
    data = VideoFolder(tmp_path, ClipSpec(4, None, 16, 16))
    (folder / "00001.png").unlink()
    with pytest.raises(TrainingError, match=r"'walk' failed to decode \(FileNotFoundError: No such file") as e:
        data[0]
    assert str(tmp_path) not in str(e.value)
    (folder / "00001.png").write_text("not an image any more")   # PIL's message repeats the path, strerror is None
    with pytest.raises(TrainingError, match=r"'walk' failed to decode \(UnidentifiedImageError: cannot identify image "
                                            r"file 'walk/00001.png'\)") as e:
        data[0]
    assert str(tmp_path) not in str(e.value)


def test_a_frame_folder_of_mixed_sizes_is_refused_when_probed(tmp_path):
    """Before the model is copied or any clip encoded, not when the clip is first read."""
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, side in enumerate((32, 16, 32)):
        Image.new("RGB", (side, side)).save(folder / f"{i:05d}.png")
    with pytest.raises(TrainingError, match=r"'mixed': unreadable \(TrainingError: its images differ in size "
                                            r"\(16x16, 32x32\); expected one size per clip\)"):
        VideoFolder(tmp_path, ClipSpec(3, None, 16, 16))


FIT_PEAK = """
import sys, torch
from devtools.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from videoldm_core.training.data import fit
video = torch.randint(0, 256, (6, 1024, 1024, 3), dtype=torch.uint8)
fit(video[:1, :64, :64], 16, 16, "centre")   # the first call's one-off allocations
before = rss_bytes()
reset_peak_rss()
fit(video, 16, 16, "centre")
print(peak_rss_bytes() - before)
"""


def test_fit_holds_the_8bit_clip_and_one_float_copy():
    """What `clip_memory_problem` counts for the source frames (1 + 4 bytes a value): the float
    conversion is done in place, not through a second float32 clip. Measured in a fresh process
    (a heap that has held larger tensors hides new ones from the resident size)."""
    import subprocess
    import sys

    from devtools.process_memory import kernel_keeps_peaks

    assert kernel_keeps_peaks(), "this kernel keeps no peak resident size; the measurement needs it"
    run = subprocess.run([sys.executable, "-c", FIT_PEAK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    float_clip = 6 * 1024 * 1024 * 3 * 4
    assert 0.8 * float_clip < int(run.stdout) < 1.4 * float_clip


def test_caption_files_that_cannot_be_read_are_named(tmp_path):
    write_mp4(tmp_path / "a.mp4", moving_shapes_clip(0, 4, 16, 16).frames, 30.0)
    (tmp_path / "captions.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TrainingError, match=r"'.*captions.json' could not be read as JSON \(nested too deeply\)"):
        discover(tmp_path)
    (tmp_path / "captions.json").write_text('{"a": ' + "9" * 5000 + "}")   # past Python's int digits: a ValueError
    with pytest.raises(TrainingError, match=r"'.*captions.json' could not be read as JSON \(Exceeds the limit"):
        discover(tmp_path)
    (tmp_path / "captions.json").unlink()
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(TrainingError, match=r"caption file 'a.txt' could not be read as UTF-8 text"):
        discover(tmp_path)


# -- latent cache ---------------------------------------------------------------------------------

def test_cache_is_reused_encoding_one_clip_and_rebuilt_when_a_file_changes(mp4_folder, tmp_path):
    spec = ClipSpec(frames=8, fps=15.0, height=48, width=64)
    calls = []
    shards = build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub(calls), tmp_path / "cache", "stub-vae",
                                shard_size=1)
    assert len(calls) == 2 and len(shards) == 2 and sorted(os.listdir(tmp_path / "cache")) == [
        "index.json", "shard_00000.safetensors", "shard_00001.safetensors"]
    item = shards[1]
    assert item["latents"].shape == (8, 4, 6, 8) and item["text"] is None and item["name"] == "clip_0001.mp4"
    expected = encode_stub([])(VideoFolder(mp4_folder, spec)[1]["frames"])
    assert torch.allclose(item["latents"], expected)

    again = build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub(calls), tmp_path / "cache", "stub-vae",
                               shard_size=1)
    assert len(calls) == 3 and again.key == shards.key   # the first clip only: its shapes are the encoder's

    build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub(calls), tmp_path / "cache", "other-vae", shard_size=1)
    assert len(calls) == 5  # another encoder identity: rebuilt

    data = VideoFolder(mp4_folder, spec)
    key = cache_key(data.entries, spec, "stub-vae", **data.settings)
    stat = os.stat(mp4_folder / "clip_0000.mp4")
    os.utime(mp4_folder / "clip_0000.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = VideoFolder(mp4_folder, spec)
    assert cache_key(changed.entries, spec, "stub-vae", **changed.settings) != key
    assert cache_key(changed.entries, ClipSpec(8, 7.5, 48, 64), "stub-vae", **changed.settings) != \
        cache_key(changed.entries, spec, "stub-vae", **changed.settings)
    recaptioned = [replace(changed.entries[0], caption="another caption")] + changed.entries[1:]
    assert cache_key(recaptioned, spec, "stub-vae") == cache_key(changed.entries, spec, "stub-vae")
    assert cache_key(recaptioned, spec, "stub-vae", captions=True) != cache_key(changed.entries, spec, "stub-vae",
                                                                              captions=True)


def test_interrupted_build_leaves_only_whole_shards_and_resumes(mp4_folder, tmp_path):
    data = VideoFolder(mp4_folder, ClipSpec(frames=4, fps=None, height=48, width=64))
    calls = []
    encode = encode_stub(calls)

    def failing(frames):
        if len(calls) == 1:
            raise KeyboardInterrupt
        return encode(frames)

    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(data, failing, tmp_path, "stub-vae", shard_size=1)
    assert sorted(os.listdir(tmp_path)) == ["shard_00000.safetensors"]  # no index, no half file
    with pytest.raises(TrainingError, match="build it with build_latent_cache"):
        LatentShards(tmp_path)
    shards = build_latent_cache(data, encode, tmp_path, "stub-vae", shard_size=1)
    assert len(calls) == 2 and len(shards) == 2  # the finished shard was kept: only clip 1 encoded again


def test_a_write_cut_short_leaves_no_shard_behind(mp4_folder, tmp_path, monkeypatch):
    import videoldm_core.weights_file as weights_file   # the pack's one atomic writer of safetensors files

    def half_write(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a shard")
        raise OSError("disk full")

    monkeypatch.setattr(weights_file, "save_file", half_write)
    data = VideoFolder(mp4_folder, ClipSpec(frames=2, fps=None, height=48, width=64))
    with pytest.raises(OSError, match="disk full"):
        build_latent_cache(data, encode_stub([]), tmp_path, "stub-vae", shard_size=1)
    assert os.listdir(tmp_path) == []


def test_captions_are_encoded_and_shards_load_lazily(mp4_folder, tmp_path):
    data = VideoFolder(mp4_folder, ClipSpec(frames=2, fps=None, height=48, width=64))
    texts = []

    def encode_text(captions):
        texts.append(list(captions))
        return torch.stack([torch.full((3, 5), float(len(c))) for c in captions])

    shards = build_latent_cache(data, encode_stub([]), tmp_path, "stub", shard_size=1, encode_text=encode_text)
    assert texts == [[data[0]["caption"]], [data[1]["caption"]]]
    assert shards[1]["text"].shape == (3, 5) and shards[1]["text"][0, 0] == len(data[1]["caption"])
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["count"] == 2 and index["shapes"] == {"latents": [2, 4, 6, 8], "text": [3, 5]}
    reader = LatentShards(tmp_path, keep=1)
    assert len(reader._open) == 0
    first, second = reader[0], reader[1]
    assert list(reader._open) == [1]   # one shard held open, read by memory map
    assert torch.equal(second["text"], shards[1]["text"]) and torch.equal(first["latents"], shards[0]["latents"])


# -- ranks and batches ----------------------------------------------------------------------------


def test_a_rank_reads_the_cache_rank_0_built_from_its_own_copy_of_the_clips_and_never_encodes_one(mp4_folder, tmp_path):
    """Another node's copy of the data folder states other modification times: its ranks computed
    another key and encoded every clip again, all at once, into the shared cache; with a cache folder
    that was not shared, into one of their own. A rank other than 0 reads rank 0's cache under rank 0's
    key, and where there is none it is refused by name, nothing encoded or written."""
    import shutil

    spec = ClipSpec(frames=8, fps=15.0, height=48, width=64)
    built = build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub([]), tmp_path / "cache", "stub-vae", shard_size=1)
    copy = shutil.copytree(mp4_folder, tmp_path / "node2" / "clips")   # the other node's copy, with its own times
    for name in os.listdir(copy):
        os.utime(copy / name, ns=(0, 10**18))
    theirs = VideoFolder(copy, spec)
    assert cache_key(theirs.entries, spec, "stub-vae", **theirs.settings) != built.key
    calls = []
    read = build_latent_cache(theirs, encode_stub(calls), tmp_path / "cache", "stub-vae", shard_size=1,
                              built_by=("rank 0", built.key))
    assert len(calls) == 1 and read.key == built.key   # the first clip only: its shapes are the encoder's
    assert torch.equal(read[1]["latents"], built[1]["latents"])
    for cache in (tmp_path / "node2" / "cache", tmp_path / "cache"):   # not shared; shared but of other clips
        with pytest.raises(TrainingError, match=r"holds no latent cache of this rank's clips as rank 0 built it: the "
                                                r"cache folder \(data.cache\) must be one folder every rank sees alike"):
            build_latent_cache(VideoFolder(copy, spec) if cache.parent == tmp_path / "node2" else
                               VideoFolder(mp4_folder, ClipSpec(frames=4, fps=15.0, height=48, width=64)),
                               encode_stub(calls), cache, "stub-vae", shard_size=1, built_by=("rank 0", built.key))
    assert not (tmp_path / "node2" / "cache").exists() and len(os.listdir(tmp_path / "cache")) == 3

def test_a_cache_rebuilt_by_another_run_under_an_open_reader_is_named(mp4_folder, tmp_path):
    """Shards are opened when first read: a second run given the same folder (another VAE) that
    rebuilt it meanwhile made the first read the second's latents without a word."""
    spec = ClipSpec(frames=8, fps=15.0, height=48, width=64)
    first = build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub([]), tmp_path / "cache", "stub-vae",
                               shard_size=1)
    first[0]   # shard 0 open; shard 1 not yet
    build_latent_cache(VideoFolder(mp4_folder, spec), encode_stub([]), tmp_path / "cache", "other-vae", shard_size=1)
    assert first[0]["name"] == "clip_0000.mp4"   # an open shard keeps the bytes it was opened on
    with pytest.raises(TrainingError, match=r"shard_00001.safetensors no longer holds this run's clips .* another run "
                                            r"has rebuilt the folder. Give each run its own data.cache folder"):
        first[1]


@pytest.mark.parametrize("index", [[1], {"shards": "x"}, {"key": "k", "count": 1, "shard_size": 1, "names": ["a"],
                                                          "shards": ["../outside.safetensors"]}])
def test_a_hostile_cache_index_is_no_cache(mp4_folder, tmp_path, index):
    """The temp folder takes uploads: an index that is not what the cache writes (another type,
    shard names that leave the folder) is no cache, and the build starts over."""
    data = VideoFolder(mp4_folder, ClipSpec(frames=8, fps=15.0, height=48, width=64))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(TrainingError, match="no latent cache"):
        LatentShards(cache)
    calls = []
    shards = build_latent_cache(data, encode_stub(calls), cache, "stub")
    assert len(shards) == len(data) and calls


@pytest.mark.parametrize("forged", ["more clips", "larger latents"])
def test_a_forged_index_with_matching_shards_is_no_cache(mp4_folder, tmp_path, forged):
    """The key can be read back through /view and the temp folder takes uploads: an index and shards
    forged together agree with each other, so the index is checked against the dataset (its clips by
    name) and the encoder (the shapes of the first clip, encoded again), not against itself."""
    from safetensors.torch import save_file

    data = VideoFolder(mp4_folder, ClipSpec(frames=4, fps=None, height=48, width=64))
    cache = tmp_path / "cache"
    build_latent_cache(data, encode_stub([]), cache, "stub", shard_size=1)
    index = json.loads((cache / "index.json").read_text())
    names, rows = (index["names"] + ["extra.mp4"], 1) if forged == "more clips" else (index["names"], 1)
    shape = [4, 4, 6, 8] if forged == "more clips" else [4, 4, 64, 64]
    index.update(names=names, count=len(names), shards=[f"shard_{s:05d}.safetensors" for s in range(len(names))],
                 shapes={"latents": shape})
    for s, name in enumerate(names):
        save_file({"latents": torch.zeros(rows, *shape)}, str(cache / index["shards"][s]),
                  metadata={"key": index["key"], "names": json.dumps([name])})
    (cache / "index.json").write_text(json.dumps(index))
    calls = []
    shards = build_latent_cache(data, encode_stub(calls), cache, "stub", shard_size=1)
    assert len(shards) == len(data) and shards[0]["latents"].shape == (4, 4, 6, 8)
    # other clips are refused by name at once; the same clips cost the shape check's clip as well
    assert len(calls) == len(data) + (forged == "larger latents")


@pytest.mark.parametrize("forged", ["other tensors", "other shapes", "non-finite"])
def test_a_shard_replaced_after_the_build_is_checked_by_what_it_holds(mp4_folder, tmp_path, forged):
    """The temp folder takes uploads and /view reads the index back, so a shard can be replaced under
    its own name and key: one that holds other tensors (an interpolation regime out of range) or other
    shapes is no cache (the clips are encoded again), one with NaN is refused when read, naming the clip."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from videoldm_core.training.latent_cache import CachedClips

    data = VideoFolder(mp4_folder, ClipSpec(frames=8, fps=15.0, height=48, width=64))
    calls, cache = [], tmp_path / "cache"
    build_latent_cache(data, encode_stub(calls), cache, "stub", shard_size=1)
    shard = cache / "shard_00000.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        meta, latents = f.metadata(), f.get_tensor("latents")
    tensors = {"other tensors": {"latents": latents, "regime": torch.tensor([7])},
               "other shapes": {"latents": torch.full((1, 5, 4, 6, 8), 1e4)},
               "non-finite": {"latents": torch.full_like(latents, float("nan"))}}[forged]
    save_file(tensors, str(shard), metadata=meta)
    calls.clear()
    shards = build_latent_cache(data, encode_stub(calls), cache, "stub", shard_size=1)
    clips = CachedClips(shards)
    if forged == "non-finite":
        assert len(calls) == 1   # its header is what the build writes: only the shape check's clip
        with pytest.raises(TrainingError, match=r"clip 'clip_0000.mp4' holds NaN or infinity in its cached latents"):
            clips[0]
    else:
        assert len(calls) == 3   # no cache: the shape check's clip, then every clip encoded again
        assert set(clips[0]) == {"latents"} and torch.equal(clips[0]["latents"], latents[0].float())
