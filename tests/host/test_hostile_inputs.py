"""Inputs an API client controls, in a real ComfyUI (issue 20, part B): training folders stay inside
the input folder, saves stay inside models/, numbers are finite and in range at validation and at
run time, outputs are sized before they are allocated, sampling stops when the latent turns
non-finite, and error types carry no install path."""

import os
import uuid

import pytest
import torch

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def input_dir(pack):
    import folder_paths

    return folder_paths.get_input_directory()


@pytest.fixture()
def clips(input_dir, tmp_path):
    """A folder `input/<name>` with one clip, a symlink `input/<name>_out` to a folder outside the
    input folder, and that outside folder (which holds a clip too)."""
    from devtools.synthetic_data import write_mp4
    from videoldm_core.moving_shapes import moving_shapes_clip

    name = f"clips_{uuid.uuid4().hex[:8]}"
    inside, outside = os.path.join(input_dir, name), tmp_path / "outside_secret_folder"
    os.makedirs(inside)
    outside.mkdir()
    frames = moving_shapes_clip(1, 4, 16, 16, 8.0).frames
    write_mp4(os.path.join(inside, "own.mp4"), frames, 8.0)
    write_mp4(outside / "private_clip.mp4", frames, 8.0)
    os.symlink(outside, os.path.join(input_dir, name + "_out"))
    return name, str(outside)


def refused_folder_message(pack_module, folder: str) -> str:
    paths = pack_module("host.confined_paths")
    with pytest.raises(pack_module("videoldm_core.training.objective").TrainingError) as e:
        paths.training_folder(folder)
    return str(e.value)


def test_training_folders_outside_the_input_folder_are_refused_without_a_listing(pack_module, clips, input_dir):
    name, outside = clips
    messages = {folder: refused_folder_message(pack_module, folder)
                for folder in ("/etc", "/", "../", f"../{os.path.basename(input_dir)}/../..", name + "_out",
                               outside, f"{name}/../../", "", "no_such_folder", f"{name}\x00/etc")}
    etc_names = [n for n in os.listdir("/etc") if len(n) >= 6]
    for folder, message in messages.items():
        assert "expected a folder of videos or frame folders inside ComfyUI's input folder" in message, folder
        assert input_dir not in message and "private_clip" not in message and "ignored" not in message, message
        assert not [n for n in etc_names if n in message], (folder, message)
    # outside and missing read the same: the message says nothing of what exists outside
    assert messages["/etc"].replace("'/etc'", "X") == messages["no_such_folder"].replace("'no_such_folder'", "X")


def test_training_folders_inside_the_input_folder_or_listed_by_the_operator_are_read(pack_module, clips, input_dir,
                                                                                    monkeypatch):
    paths = pack_module("host.confined_paths")
    name, outside = clips
    assert paths.training_folder(name) == os.path.realpath(os.path.join(input_dir, name))
    assert paths.training_folder(os.path.join(input_dir, name)) == os.path.realpath(os.path.join(input_dir, name))
    monkeypatch.setenv(paths.TRAINING_FOLDERS_VARIABLE, os.pathsep.join(["relative/ignored", " " + outside + " "]))
    assert paths.training_folder(outside) == os.path.realpath(outside)
    assert paths.training_folder(name + "_out") == os.path.realpath(outside)   # the link leads to an allowed folder
    assert paths.TRAINING_FOLDERS_VARIABLE in refused_folder_message(pack_module, "/etc")


def test_a_training_folder_reads_no_clip_that_links_out(pack_module, clips, input_dir):
    data = pack_module("videoldm_core.training.data")
    paths = pack_module("host.confined_paths")
    name, outside = clips
    os.symlink(os.path.join(outside, "private_clip.mp4"), os.path.join(input_dir, name, "linked.mp4"))
    dataset = data.VideoFolder(paths.training_folder(name), data.ClipSpec(4, None, 16, 16), roots=paths.training_roots(),
                               label=name)
    assert [e.name for e in dataset.entries] == ["own.mp4"]


def test_the_training_node_refuses_the_folder_at_validation(node_classes, clips):
    node = node_classes["VideoLDMTrainTemporalAdapter"]
    name, _ = clips
    assert node.validate_inputs(learning_rate=1e-4, fps=0.0, folder=name) is True
    assert node.validate_inputs(learning_rate=1e-4, fps=0.0, folder="") is True
    answer = node.validate_inputs(learning_rate=1e-4, fps=0.0, folder="/etc")
    assert isinstance(answer, str) and "inside ComfyUI's input folder" in answer and "passwd" not in answer


def test_saves_stay_inside_models_even_through_a_symlink(pack_module, tmp_path):
    import folder_paths

    training = pack_module("host.training")
    errors = pack_module("videoldm_core.errors")
    root = folder_paths.get_folder_paths("temporal_adapters")[0]
    os.makedirs(root, exist_ok=True)
    link = f"link_out_{uuid.uuid4().hex[:8]}"
    os.symlink(tmp_path, os.path.join(root, link))
    os.symlink(tmp_path / "victim.safetensors", os.path.join(root, link + "_file.safetensors"))
    for name in (f"{link}/evil", link + "_file", "../escaped", str(tmp_path / "absolute"), "a/../../escaped"):
        with pytest.raises(errors.VideoLDMError, match="expected a file name inside models/temporal_adapters"):
            training.adapter_save_path(name)
    assert not list(tmp_path.iterdir())
    assert training.adapter_save_path("sub/ok") == os.path.join(os.path.realpath(root), "sub", "ok.safetensors")



def test_save_names_too_long_for_the_filesystem_are_refused_before_the_work(node_classes, pack_module):
    """A name the filesystem cannot hold failed only when the trained adapter was saved, after every
    step, and the run was lost; the error named the server's path."""
    import folder_paths

    errors = pack_module("videoldm_core.errors")
    train = node_classes["VideoLDMTrainTemporalAdapter"]
    long_name = "a" * 237   # its file holds 255 bytes as it is named; with the counter a taken name gets, 256
    answer = train.validate_inputs(save_name=long_name)
    assert isinstance(answer, str) and "save_name: expected a file name of at most 236 bytes" in answer, answer
    assert "found 237 bytes" in answer   # the name as given, not as saved
    assert train.validate_inputs(save_name="ü" * 119) is not True   # bytes (238), not characters (119)
    assert train.validate_inputs(save_name="a" * 236) is True and train.validate_inputs(save_name="sub/ok") is True
    with pytest.raises(errors.VideoLDMError, match="at most 236 bytes"):
        pack_module("host.training").adapter_save_path(long_name)
    save = node_classes["VideoLDMSaveTemporalAdapter"]
    root = folder_paths.get_folder_paths("temporal_adapters")[0]
    for prefix, words in (("d" * 300 + "/x", "folder names of at most 255 bytes"), ("a" * 240, "at most 236 bytes"),
                          ("", "ends in a name"), (".", "ends in a name"), ("sub/..", "ends in a name")):
        answer = save.validate_inputs(filename_prefix=prefix)   # before a training upstream runs
        assert isinstance(answer, str) and words in answer and root not in answer, answer
        with pytest.raises(errors.VideoLDMError, match=words) as e:
            save.execute(temporal_adapter=None, filename_prefix=prefix)
        assert root not in str(e.value) and len(str(e.value)) < 400, str(e.value)
    assert save.validate_inputs(filename_prefix="sub/my_adapter") is True


def test_names_windows_cannot_hold_are_refused_there_before_the_work(node_classes, pack_module, monkeypatch):
    """On Windows a ':' wrote into a hidden stream of another file, '?' or a folder named 'CON' failed
    the save: after every step of a training, which was lost. Elsewhere these names are files."""
    train, save = node_classes["VideoLDMTrainTemporalAdapter"], node_classes["VideoLDMSaveTemporalAdapter"]
    names = {"run:1": "the character(s) ':'", "what?": "the character(s) '?'", "a\tb": "the character(s) '\\t'",
             "CON": "the device name 'CON'", "sub/nul.v1": "the device name 'nul'", "COM0": "the device name 'COM0'",
             "lpt¹.x": "the device name 'lpt¹'", "runs./a": "a dot or space at "
             "the end of a folder name", "aux /a": "a dot or space at the end of a folder name"}
    for name in names:
        assert train.validate_inputs(save_name=name) is True   # this server is not on Windows
    monkeypatch.setattr(pack_module("host.confined_paths"), "WINDOWS", True)
    for name, found in names.items():
        for answer in (train.validate_inputs(save_name=name), save.validate_inputs(filename_prefix=name)):
            assert isinstance(answer, str) and "expected a name Windows can hold" in answer and found in answer, answer
    for name in ("my adapter", "v1.2", "ends with a dot.", "console", "sub/COM0x", "über"):
        assert train.validate_inputs(save_name=name) is True and save.validate_inputs(filename_prefix=name) is True


def test_a_failed_save_names_the_input_and_file_without_a_server_path(pack_module, tmp_path):
    import folder_paths

    errors = pack_module("videoldm_core.errors")
    core = pack_module("videoldm_core.weights_file")
    longest = tmp_path / ("a" * 243 + ".safetensors")   # 255 bytes: a name the checks above let through is saved
    core.save_safetensors(longest, {"w": torch.zeros(1)})   # (its hidden temporary name was 13 bytes longer)
    assert [p.name for p in tmp_path.iterdir()] == [longest.name]
    with pytest.raises(OSError, match="safetensors could not write"):   # not safetensors' own error type
        core.save_safetensors(tmp_path / "no_such_folder" / "x.safetensors", {"w": torch.zeros(1)})
    root = folder_paths.get_folder_paths("temporal_adapters")[0]
    os.makedirs(root, exist_ok=True)
    blocker = os.path.join(root, f"a_file_{uuid.uuid4().hex[:8]}")
    open(blocker, "w").close()   # a file where the prefix wants a folder
    adapter = pack_module("host.temporal_adapter").LoadedAdapter("x", None, None)
    try:
        with pytest.raises(errors.VideoLDMError, match="filename_prefix: could not write") as e:
            pack_module("host.temporal_adapter").save_temporal_adapter(adapter, f"{os.path.basename(blocker)}/mine")
    finally:
        os.remove(blocker)
    assert root not in str(e.value) and os.path.realpath(root) not in str(e.value)


def test_a_linked_name_outside_load_temporal_vaes_folders_is_refused(node_classes, pack_module):
    """A linked vae_name is any text (core's String to Combo): only the three folders it lists are read."""
    decoder = pack_module("videoldm_core.temporal_decoder")
    node = node_classes["VideoLDMLoadTemporalVAE"]
    for name in ("custom_nodes/some_pack/README.md", "nofolder", "input/x.safetensors", "vae/"):
        with pytest.raises(decoder.TemporalDecoderFormatError, match="vae_name: expected '<folder>/<file>'"):
            node.execute(vae_name=name, temporal_decoder="none")


def test_text_that_is_not_a_choice_is_named(node_classes, pack_module):
    interpolate = node_classes["VideoLDMInterpolateKeyframes"]
    for regime in ({"a": 1}, ["T-to-4T"], 4):
        answer = interpolate.validate_inputs(regime=regime)
        assert isinstance(answer, str) and answer.startswith("regime ") and "not in list" in answer, answer
    sampling = pack_module("host.sampling")
    context = pack_module("videoldm_core.context")
    with pytest.raises(context.ContextError, match=r"^sampler_name: expected one of \["):
        sampling.sampler_and_sigmas(None, "bogus", "normal", 4)
    with pytest.raises(context.ContextError, match=r"^scheduler: expected one of \["):
        sampling.sampler_and_sigmas(None, "euler", "bogus", 4)


def test_a_huge_text_input_is_not_echoed_back_whole(node_classes):
    answer = node_classes["VideoLDMVideoContext"].validate_inputs(length=16, positions="x" * 2_000_000, use_last=0)
    assert isinstance(answer, str) and "2,000,000 characters" in answer and len(answer) < 400, answer[:500]
    answer = node_classes["VideoLDMVideoContext"].validate_inputs(length=16, positions="9" * 4400, use_last=0)
    assert isinstance(answer, str) and len(answer) < 400, answer[:500]


# -- numbers -----------------------------------------------------------------------------------------------------

NUMBER_CASES = [
    ("VideoLDMContextGuider", dict(cfg=7.5, context_scale=1.0), [("cfg", NAN), ("context_scale", INF), ("cfg", 101.0)]),
    ("VideoLDMExtendVideo", dict(cfg=7.5, context_scale=1.0), [("cfg", NAN), ("context_scale", NAN), ("context_scale", -1.0)]),
    ("VideoLDMInterpolateKeyframes", dict(regime="T-to-4T", augmentation=-1.0, cfg=7.5, fps=1.875),
     [("fps", NAN), ("fps", 0.0), ("augmentation", INF), ("cfg", -INF)]),
    ("VideoLDMVideoUpscale", dict(noise_augmentation=0.1, cfg=4.0, tile_size=64),
     [("noise_augmentation", NAN), ("cfg", INF), ("tile_size", 12), ("tile_size", 3), ("tile_size", 0)]),
    ("VideoLDMMovingShapes", dict(frames=16, width=64, height=64, fps=15.0, scale=1), [("fps", NAN), ("fps", INF), ("scale", 9)]),
    ("VideoLDMTrainTemporalAdapter", dict(learning_rate=1e-4, fps=0.0, text_dropout=0.1),
     [("learning_rate", NAN), ("fps", INF), ("fps", -1.0), ("text_dropout", NAN), ("text_dropout", 1.5)]),
    ("VideoLDMApplyTemporalAdapter", dict(strength=1.0), [("strength", NAN), ("strength", INF), ("strength", 2.5)]),
    ("VideoLDMTemporalVAEDecode", dict(window=16, overlap=4, tile_size=0), [("tile_size", 3), ("tile_size", 12),
                                                                          ("tile_size", NAN)]),
    ("VideoLDMTemporalVAEDecodeToVideo", dict(fps=24.0, window=17, overlap=1, tile_size=0),
     [("fps", NAN), ("fps", 0.0), ("fps", 5000.0), ("fps", INF), ("tile_size", 12)]),
]


@pytest.mark.parametrize("node_id, good, bad", NUMBER_CASES, ids=[c[0] for c in NUMBER_CASES])
def test_non_finite_and_out_of_range_numbers_are_refused_at_validation(node_classes, node_id, good, bad):
    node = node_classes[node_id]
    assert node.validate_inputs(**good) is True
    linked = {k: (v if k == "regime" else None) for k, v in good.items()}   # unknown at validation
    assert node.validate_inputs(**linked) is True
    for name, value in bad:
        answer = node.validate_inputs(**good | {name: value})
        assert isinstance(answer, str) and answer.startswith(f"{name} must be"), (name, value, answer)


def test_a_linked_nan_is_refused_when_the_node_runs(ctx, given, pack_module):
    limits = pack_module("videoldm_core.limits")
    node = ctx["nodes"].rollout.ExtendVideo
    with pytest.raises(limits.InputValueError, match="Extend Video: cfg must be a finite number, found nan"):
        node.execute(model=ctx["predictor"], positive=ctx["positive"], negative=ctx["negative"], video={"samples": given},
                     segments=1, segment_length=4, context_frames=1, seed=0, steps=1, cfg=NAN, context_scale=1.0,
                     sampler_name="euler", scheduler="normal")


# -- memory -----------------------------------------------------------------------------------------------------

def test_moving_shapes_beyond_the_limit_is_refused_before_drawing(node_classes, pack_module):
    node = node_classes["VideoLDMMovingShapes"]
    answer = node.validate_inputs(frames=4096, width=2048, height=2048, fps=15.0, scale=1)
    assert "Moving Shapes: frames=4096, width=2048, height=2048, scale=1 imply" in answer and "16.00 GiB" in answer
    assert "scale=8 imply" in node.validate_inputs(frames=64, width=2048, height=2048, fps=15.0, scale=8)
    with pytest.raises(pack_module("videoldm_core.limits").MemoryLimitError):
        node.execute(seed=0, frames=4096, width=2048, height=2048, fps=15.0, scale=1)


def test_moving_shapes_stops_at_an_interrupt_between_frames(node_classes):
    import comfy.model_management as mm

    from videoldm_core.moving_shapes import moving_shapes_clip

    node = node_classes["VideoLDMMovingShapes"]
    images, fps, caption = node.execute(seed=3, frames=4, width=16, height=16, fps=8.0, scale=1).result
    clip = moving_shapes_clip(3, 4, 16, 16, 8.0)
    assert torch.equal(images, ((clip.frames + 1) / 2).movedim(1, -1)) and images.is_contiguous() and caption == clip.caption
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            node.execute(seed=3, frames=4096, width=64, height=64, fps=8.0, scale=1)
    finally:
        mm.interrupt_current_processing(False)


def test_extend_video_sizes_its_output_before_allocating(ctx, given, pack_module):
    limits = pack_module("videoldm_core.limits")
    node = ctx["nodes"].rollout.ExtendVideo
    with pytest.raises(limits.MemoryLimitError, match="Extend Video: video_frames=2, segments=10000, segment_length=4096, "
                                                      "context_frames=2 imply .* GiB for a latent of 40940002 frames"):
        node.execute(model=ctx["predictor"], positive=ctx["positive"], negative=ctx["negative"], video={"samples": given},
                     segments=10000, segment_length=4096, context_frames=2, seed=0, steps=1, cfg=1.0, context_scale=1.0,
                     sampler_name="euler", scheduler="normal")


def test_interpolation_and_upscaling_size_their_output_against_the_operators_limit(ctx, given, tiny_x4_bundle,
                                                                                pack_module, monkeypatch):
    limits = pack_module("videoldm_core.limits")
    monkeypatch.setenv(limits.LIMIT_VARIABLE, str(1 / 1024 ** 2))   # 1 KiB
    interpolate = pack_module("host.interpolation")
    with pytest.raises(limits.MemoryLimitError, match="Interpolate Keyframes: keyframes=2, window_keyframes=5 imply"):
        interpolate.interpolate_keyframes(ctx["predictor"], ctx["positive"], ctx["negative"], {"samples": given},
                                          "T-to-4T", True, 0.0, 5, 0, 1, 1.0, "euler", "normal", 2.0)
    upscale = pack_module("host.video_upscale")
    model, clip, _ = tiny_x4_bundle
    with pytest.raises(limits.MemoryLimitError, match="Video Upscale: frames=3, width=16, height=8 imply"):
        upscale.upscale_video(model, ctx["positive"], ctx["negative"], torch.zeros(3, 8, 16, 3), 0.1, 0, 1, 1.0, "euler",
                              "normal", 64, 16, 8, 2)


# -- non-finite latents, error types ------------------------------------------------------------------------------

def test_a_latent_that_turns_non_finite_stops_extend_video_at_that_step(ctx, given, pack_module):
    limits = pack_module("videoldm_core.limits")
    text, options = ctx["positive"][0]
    broken = [[text * NAN, options]]
    node = ctx["nodes"].rollout.ExtendVideo
    with pytest.raises(limits.NonFiniteError, match="Extend Video: the latent turned non-finite at step 1 of segment 1"):
        with torch.inference_mode():
            node.execute(model=ctx["predictor"], positive=broken, negative=ctx["negative"], video={"samples": given},
                         segments=3, segment_length=4, context_frames=1, seed=0, steps=2, cfg=2.0, context_scale=1.0,
                         sampler_name="euler", scheduler="normal")


def silent_nan_sampler():
    """A SAMPLER that returns NaN without calling the step callback (the callback sees a step's input,
    never the last step's output): only a check of the sampled latent can stop it."""
    import comfy.samplers

    return comfy.samplers.KSAMPLER(lambda model, x, sigmas, **kwargs: torch.full_like(x, NAN))


def test_a_cancelled_context_guider_keeps_no_conds_or_models(ctx, pack_module):
    """ComfyUI caches the GUIDER output: a cancelled run left its processed conds (c_S in each of
    three branches) and the loaded models on it until its next run."""
    import comfy.model_management as mm
    import comfy.samplers

    def cancelled(model, x, sigmas, **kwargs):
        model(x, sigmas[0] * x.new_ones(x.shape[0]), **kwargs["extra_args"])   # one step, then Cancel
        raise mm.InterruptProcessingException()

    sigmas = comfy.samplers.calculate_sigmas(ctx["predictor"].get_model_object("model_sampling"), "normal", 2)
    guider = ctx["guider"].ContextGuider(ctx["predictor"], ctx["context"].VideoContext(torch.zeros(4, 4, 8, 8), (0,)))
    guider.set_conds(ctx["positive"], ctx["negative"])
    with pytest.raises(mm.InterruptProcessingException):
        guider.sample(torch.randn(4, 4, 8, 8), torch.zeros(4, 4, 8, 8), comfy.samplers.KSAMPLER(cancelled), sigmas,
                      disable_pbar=True, seed=0)
    assert not {"conds", "inner_model", "loaded_models"} & set(vars(guider))
    assert guider.original_conds   # what set_conds gave is kept: the GUIDER samples again


def test_a_sampled_latent_that_is_non_finite_is_stopped_after_the_last_step(ctx, given, tiny_x4_bundle, pack_module):
    """Core KSampler / SamplerCustom with an adapted MODEL, the pack's sampling nodes and Context
    Guider: a NaN sample is named instead of reaching VAE Decode as black frames."""
    import comfy.sample
    import comfy.samplers

    limits = pack_module("videoldm_core.limits")
    sampling = ctx["predictor"].get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", 2)
    noise, latent = torch.randn(4, 4, 8, 8), torch.zeros(4, 4, 8, 8)
    with pytest.raises(limits.NonFiniteError, match=r"Video LDM: the latent turned non-finite after sampling with the "
                                                    r"temporal adapter\(s\) 'plain'"):
        comfy.sample.sample_custom(ctx["plain"], noise, 2.0, silent_nan_sampler(), sigmas, ctx["positive"],
                                   ctx["negative"], latent)
    guider = ctx["guider"].ContextGuider(ctx["predictor"], ctx["context"].VideoContext(torch.zeros(4, 4, 8, 8), (0,)))
    guider.set_conds(ctx["positive"], ctx["negative"])
    with pytest.raises(limits.NonFiniteError, match="Context Guider: the latent turned non-finite after sampling"):
        guider.sample(noise, latent, silent_nan_sampler(), sigmas, disable_pbar=True, seed=0)
    with pytest.raises(limits.NonFiniteError, match="Extend Video, segment 1: the latent turned non-finite after sampling"):
        pack_module("host.rollout").extend_video(ctx["predictor"], ctx["positive"], ctx["negative"], {"samples": given},
                                                 2, 4, 1, 0, 2, 2.0, "euler", "normal", sampler=silent_nan_sampler())
    with pytest.raises(limits.NonFiniteError, match="Interpolate Keyframes, window 1: the latent turned non-finite"):
        pack_module("host.interpolation").interpolate_keyframes(
            ctx["predictor"], ctx["positive"], ctx["negative"], {"samples": given}, "T-to-4T", True, 0.0, 5, 0, 2, 2.0,
            "euler", "normal", 2.0, sampler=silent_nan_sampler())
    model, clip, _ = tiny_x4_bundle
    prompt = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    spec, module = ctx["patch"].fresh_adapter_for_model(model)
    adapted = ctx["patch"].apply_adapter(model, ctx["patch"].build_adapter_patcher(spec, module.state_dict(), "test"), "x4")
    for x4 in (model, adapted):   # with an adapter, its sampling wrapper leaves the naming to the node
        with pytest.raises(limits.NonFiniteError, match="Video Upscale: the latent turned non-finite after sampling"):
            pack_module("host.video_upscale").upscale_video(x4, prompt, prompt, torch.rand(3, 8, 16, 3), 0.1, 0, 2, 1.0,
                                                            "euler", "normal", 64, 16, 8, 2, sampler=silent_nan_sampler())


def test_pack_errors_are_reported_without_the_install_path(pack, pack_module):
    import execution

    errors = [pack_module("videoldm_core.training.objective").TrainingError, pack_module("videoldm_core.limits").MemoryLimitError,
              pack_module("videoldm_core.context").ContextError, pack_module("videoldm_core.video_upscale").TilingError]
    assert pack.__name__ != "videoldm"   # the pack's modules really are named after where it is installed
    for error in errors:
        assert execution.full_type_name(error) == f"videoldm.{error.__name__}"


def every_number_input(node_classes):
    from comfy_api.v0_0_2 import io

    for node_id, cls in sorted(node_classes.items()):
        for spec in cls.define_schema().inputs:
            if isinstance(spec, (io.Int.Input, io.Float.Input)):
                yield node_id, spec


def test_every_float_widget_can_hold_its_minimum(node_classes):
    """The frontend rounds a float widget to its `round` (else its `step`): a minimum finer than that
    (a learning rate of 5e-6 under a step of 1e-5) could not be typed in."""
    from comfy_api.v0_0_2 import io

    for node_id, spec in every_number_input(node_classes):
        if isinstance(spec, io.Float.Input) and spec.min and spec.min > 0:
            precision = spec.round or spec.step
            assert precision <= spec.min, f"{node_id}.{spec.id}: min {spec.min} under the widget's precision {precision}"


def test_every_number_input_of_every_node_is_checked_when_the_node_runs(node_classes, pack_module):
    """A linked value (a primitive node, another node's output) skips ComfyUI's range check: each
    node refuses each of its number inputs below its minimum, above its maximum or NaN, by name,
    first thing when it runs (every other input None here: nothing else is looked at before)."""
    import inspect
    import re

    limits = pack_module("videoldm_core.limits")
    cases = list(every_number_input(node_classes))
    assert len(cases) >= 40, len(cases)
    for node_id, spec in cases:
        cls = node_classes[node_id]
        others = {name: None for name in inspect.signature(cls.execute).parameters}
        display = cls.define_schema().display_name
        for bad in [v for v in (None if spec.min is None else spec.min - 1, None if spec.max is None else spec.max + 1,
                                NAN) if v is not None]:
            with pytest.raises(limits.InputValueError, match=rf"^{re.escape(display)}: {spec.id} must be"):
                cls.execute(**others | {spec.id: bad})


def test_every_text_choice_and_switch_input_of_every_node_is_checked_when_the_node_runs(node_classes, pack_module):
    """A link carries any value its type check lets through (a switch's matching output passes an
    INT to a STRING input; ComfyUI converts nothing linked): each node names a text, choice or
    on/off input of another kind first thing when it runs, not with a raw Python error later."""
    import inspect
    import re

    import numpy
    from comfy_api.v0_0_2 import io

    limits = pack_module("videoldm_core.limits")
    cases = [(node_id, spec) for node_id, cls in sorted(node_classes.items()) for spec in cls.define_schema().inputs
             if isinstance(spec, (io.String.Input, io.Combo.Input, io.Boolean.Input))]
    assert len(cases) >= 20, len(cases)
    for node_id, spec in cases:
        cls = node_classes[node_id]
        others = {name: None for name in inspect.signature(cls.execute).parameters}
        display = cls.define_schema().display_name
        bad = "false" if isinstance(spec, io.Boolean.Input) else 7
        with pytest.raises(limits.InputValueError, match=rf"^{re.escape(display)}: {spec.id}: expected"):
            cls.execute(**others | {spec.id: bad})
    kinds = pack_module("nodes.io_types")
    switch = io.Boolean.Input("switch")
    assert kinds.kind_problem("switch", numpy.bool_(False), switch) is None   # other packs' nodes give numpy's
    assert kinds.kind_problem("switch", True, switch) is None and kinds.kind_problem("switch", 1, switch)
