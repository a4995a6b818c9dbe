"""What the core refuses before it computes (issue 20, part B): outputs above the memory limit,
non-finite numbers and latents, training folders whose links lead out, and error types that
would name the server's install path."""

import importlib
import inspect

import numpy as np
import pytest
import torch

from videoldm_core import limits
from videoldm_core.confined_paths import within
from videoldm_core.errors import VideoLDMError
from videoldm_core.moving_shapes import clip_bytes, moving_shapes_clip
from videoldm_core.training.data import ClipSpec, discover
from videoldm_core.training.objective import TrainingError
from devtools.synthetic_data import write_mp4

pytestmark = pytest.mark.usefixtures("one_thread")

ERROR_MODULES = ("context", "interpolation", "noise_schedule", "positional", "video_upscale", "limits",
                 "training.objective", "errors")


def pack_error_classes():
    for name in ERROR_MODULES:
        module = importlib.import_module(f"videoldm_core.{name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__name__ not in dir(__builtins__):
                yield cls


def test_every_pack_error_is_reported_under_the_neutral_module_name():
    """ComfyUI shows `<module>.<class>`; the module must not be the install folder's path."""
    classes = set(pack_error_classes())
    assert {"ContextError", "InterpolationError", "ScheduleError", "FrameLimitError", "TilingError",
            "TrainingError", "MemoryLimitError", "NonFiniteError", "InputValueError"} <= {c.__name__ for c in classes}
    for cls in classes:
        assert issubclass(cls, VideoLDMError) and issubclass(cls, ValueError), cls
        assert cls.__module__ == "videoldm", cls


def test_output_above_the_limit_is_refused_naming_inputs_and_sizes(monkeypatch):
    monkeypatch.delenv(limits.LIMIT_VARIABLE, raising=False)
    assert limits.output_limit_bytes() == 16 * 1024 ** 3
    implied = clip_bytes(4096, 2048, 2048, 1)
    assert implied > 192 * 1024 ** 3   # 4096 frames of 3x2048x2048 float32: 192 GiB, plus a float64 frame
    with pytest.raises(limits.MemoryLimitError) as e:
        limits.check_output_size("Moving Shapes", implied, dict(frames=4096, width=2048, height=2048))
    message = str(e.value)
    assert "Moving Shapes" in message and "frames=4096" in message and "16.00 GiB" in message
    assert f"{implied / 1024 ** 3:.2f} GiB" in message and limits.LIMIT_VARIABLE in message
    assert limits.check_output_size("Moving Shapes", 1024, {}) == 1024


@pytest.mark.parametrize("value, expected", [("0.5", 0.5 * 1024 ** 3), ("nan", 16 * 1024 ** 3), ("-1", 16 * 1024 ** 3),
                                             ("lots", 16 * 1024 ** 3), ("inf", 16 * 1024 ** 3),
                                             ("0", 16 * 1024 ** 3)])   # 0 would refuse every output
def test_the_operator_sets_the_limit_and_nonsense_keeps_the_default(monkeypatch, value, expected):
    monkeypatch.setenv(limits.LIMIT_VARIABLE, value)
    assert limits.output_limit_bytes() == int(expected)


def test_tensor_bytes_never_overflows():
    assert limits.tensor_bytes((10_000 * 4096, 4, 2048, 2048)) == 10_000 * 4096 * 4 * 2048 * 2048 * 4


@pytest.mark.parametrize("value, problem", [
    (float("nan"), "finite"), (float("inf"), "finite"), (-float("inf"), "finite"), (-0.5, "at least 0"),
    (101.0, "at most 100"), ("7", "a number"), (True, "a number"), (None, "a number"), (np.float32("nan"), "finite"),
    (torch.tensor(3.0), "a number")])
def test_numbers_that_are_not_finite_or_out_of_range_are_named(value, problem):
    found = limits.number_problem("cfg", value, 0.0, 100.0)
    assert found is not None and found.startswith("cfg must be") and problem in found


@pytest.mark.parametrize("value", [0.0, 7.5, 100.0, 3, np.int64(3), np.float32(7.5)])
def test_finite_numbers_in_range_pass(value):   # numpy's scalars too: a linked value may be one
    assert limits.number_problem("cfg", value, 0.0, 100.0) is None


def test_a_non_finite_latent_is_refused_with_the_count():
    x = torch.zeros(2, 4, 8, 8)
    limits.check_finite_latent(x, "Extend Video", "at step 1")
    x[1, 0, 0, :3] = float("nan")
    with pytest.raises(limits.NonFiniteError, match=r"Extend Video: the latent turned non-finite at step 2 \(3 of 512"):
        limits.check_finite_latent(x, "Extend Video", "at step 2")


def test_moving_shapes_draws_frame_by_frame_and_can_be_stopped_between_frames():
    drawn = []
    clip = moving_shapes_clip(3, 5, 16, 16, fps=8.0, on_frame=drawn.append)
    assert drawn == [0, 1, 2, 3, 4] and clip.frames.shape == (5, 3, 16, 16) and clip.frames.dtype == torch.float32
    assert torch.equal(moving_shapes_clip(3, 2, 16, 16, fps=8.0).frames, clip.frames[:2])

    class Stop(Exception):
        pass

    def stop_after_two(i):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        moving_shapes_clip(3, 1000, 16, 16, fps=8.0, on_frame=stop_after_two)


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 0.0])
def test_moving_shapes_and_clip_specs_refuse_a_non_finite_fps(fps):
    with pytest.raises(TrainingError, match="fps"):
        moving_shapes_clip(0, 2, 16, 16, fps=fps)
    if fps != 0.0:
        with pytest.raises(TrainingError, match="fps"):
            ClipSpec(4, fps, 16, 16)


def test_within_follows_dots_and_links(tmp_path):
    root, outside = tmp_path / "input", tmp_path / "secret"
    (root / "clips").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside, target_is_directory=True)
    assert within(root / "clips", [root]) and within(root, [root])
    assert not within(root / ".." / "secret", [root]) and not within(root / "out", [root])
    assert not within(tmp_path / "input2", [root])   # a prefix of the name is not inside
    assert not within(f"{root}/clips\x00/etc", [root])   # no folder holds a NUL byte (realpath raised)


def test_a_path_on_another_drive_is_outside(monkeypatch):
    """On Windows, commonpath raises for paths on two drives; that is outside, not an error."""
    import ntpath

    from videoldm_core import confined_paths

    monkeypatch.setattr(confined_paths, "real", lambda path: ntpath.normpath(str(path)))
    monkeypatch.setattr(confined_paths.os.path, "commonpath", ntpath.commonpath)
    assert not within("D:\\clips", ["C:\\ComfyUI\\input"])
    assert within("D:\\clips\\a", ["C:\\ComfyUI\\input", "D:\\clips"])   # the next root is still tried


def test_a_confined_folder_ignores_links_out_unopened_and_names_itself_by_its_label(tmp_path):
    root, outside = tmp_path / "input", tmp_path / "secret"
    clips = root / "clips"
    clips.mkdir(parents=True)
    outside.mkdir()
    write_mp4(outside / "private.mp4", moving_shapes_clip(1, 4, 16, 16, 8.0).frames, 8.0)
    (outside / "notes.txt").write_text("do not read")
    (clips / "linked.mp4").symlink_to(outside / "private.mp4")
    (clips / "captions.json").symlink_to(outside / "notes.txt")   # would fail as JSON if it were read
    with pytest.raises(TrainingError) as e:
        discover(clips, roots=[root], label="clips")
    message = str(e.value)
    assert "'clips' has no clips" in message and "ignored: captions.json, linked.mp4" in message
    assert str(tmp_path) not in message and "private" not in message
    write_mp4(clips / "own.mp4", moving_shapes_clip(2, 4, 16, 16, 8.0).frames, 8.0)
    assert [entry.name for entry in discover(clips, roots=[root], label="clips")] == ["own.mp4"]
    (clips / "captions.json").unlink()
    assert [entry.name for entry in discover(clips)] == ["linked.mp4", "own.mp4"]   # the CLI reads any folder


def test_a_confined_folder_outside_its_roots_is_refused_without_saying_whether_it_exists(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    messages = []
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(TrainingError) as e:
            discover(folder, roots=[root], label="x")
        messages.append(str(e.value))
    assert messages[0] == messages[1] and str(tmp_path) not in messages[0]


def test_a_pack_error_crosses_a_process_boundary_with_its_class_and_message():
    """Reported under the neutral module name, a pack error must still pickle: an error raised in a
    DataLoader worker (streamed training data) reaches the training process intact."""
    import pickle

    from videoldm_core.training.objective import TrainingError

    error = pickle.loads(pickle.dumps(TrainingError("shards: 1 shard(s) for 2 rank(s)")))
    assert type(error) is TrainingError and str(error) == "shards: 1 shard(s) for 2 rank(s)"
    assert type(error).__module__ == "videoldm"


def test_an_error_raised_in_a_data_loader_worker_reaches_the_training_process():
    from torch.utils.data import DataLoader, IterableDataset

    from videoldm_core.training.objective import TrainingError

    class Refusing(IterableDataset):
        def __iter__(self):
            raise TrainingError("refused in a worker")

    with pytest.raises(TrainingError, match="refused in a worker"):
        list(DataLoader(Refusing(), batch_size=None, num_workers=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 4097, -1])   # first, inside a vector block, last
def test_the_finiteness_scan_sees_every_non_finite_value_in_every_float_type(dtype, bad, where):
    x = torch.linspace(-3, 3, 10_000).to(dtype)
    assert limits.all_finite(x)
    x[where] = bad   # float8_e4m3fn has no infinity: it stores NaN
    assert not limits.all_finite(x)
    with pytest.raises(limits.NonFiniteError, match="samples holds 1 NaN or infinite values"):
        limits.check_finite_input(x.reshape(100, 100), "Video Upscale", "samples")


def test_value_bounds_reads_integers_and_wide_unsigned_types():
    assert limits.value_bounds(torch.tensor([3, -70_000, 9], dtype=torch.int64)) == (-70_000.0, 9.0)
    assert limits.value_bounds(torch.tensor([70_000, 1], dtype=torch.uint32)) == (1.0, 70_000.0)
    assert limits.all_finite(torch.tensor([1, 2], dtype=torch.int32)) and limits.all_finite(torch.zeros(0))
