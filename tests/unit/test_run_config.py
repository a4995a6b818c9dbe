"""The training CLI's run configuration is checked section by section before anything loads: an
unknown key or a value of the wrong type is refused with the key named, what was expected and found."""

from dataclasses import fields

import pytest

from videoldm_core.training.objective import TrainingError
from videoldm_core.training.run_config import SECTIONS, check_run_config
from videoldm_core.training.trainer import TrainConfig


def config(**sections):
    base = {"checkpoint": "sd15.safetensors", "mode": "interpolation", "output": "runs/x", "prompt": "", "resume": True,
            "adapter": {"init": None, "context_frames": [0, 1, 2], "context_width": 64, "regimes": [0, 1], "patch": None},
            "data": {"folder": "clips", "frames": 9, "fps": 7.5, "width": 512, "height": 320, "crop": "random",
                     "on_bad": "skip", "captions": False, "cache": None},
            "train": {"steps": 10, "lr": 1e-4, "batch_size": 2, "warmup": 1, "grad_clip": None, "precision": "bf16",
                      "ema_decay": 0.999, "gradient_checkpointing": True, "checkpoint_every": 5, "seed": 0,
                      "betas": [0.9, 0.99]},
            "decoder": {"init": None, "attention": False, "disc_start": 1, "adversarial_weight": 0.1, "disc_width": 64,
                        "disc_layers": 3, "temporal_weight": 0},
            "vae": {"kl_weight": 1e-6, "patch": 16}, "image": {"text_dropout": 0.1, "patch": None}}
    for name, values in sections.items():
        base[name] = {**base[name], **values} if isinstance(values, dict) and isinstance(base.get(name), dict) else values
    return base


def test_a_full_configuration_passes_unchanged():
    cfg = config()
    assert check_run_config(cfg) is cfg


def test_the_train_section_knows_exactly_the_trainers_settings():
    assert set(SECTIONS["train"]) == {f.name for f in fields(TrainConfig)} - {"extra"} | {"batch_size", "gradient_checkpointing",
                                                                              "text_dropout"}


def nested(section: str, values: dict) -> dict:
    """{"monitor.validation": values} as the run config holds it: {"monitor": {"validation": values}}."""
    head, _, rest = section.partition(".")
    return {head: nested(rest, values) if rest else values}


@pytest.mark.parametrize("section", [s for s in SECTIONS if s])
def test_an_unknown_key_in_any_section_is_named(section):
    with pytest.raises(TrainingError, match=rf"\['{section}\.colour'\]"):
        check_run_config(config(**nested(section, {"colour": 1})))


def test_an_unknown_top_level_key_is_named():
    cfg = config()
    cfg["shard"] = "x"
    with pytest.raises(TrainingError, match=r"top level \['shard'\]"):
        check_run_config(cfg)


@pytest.mark.parametrize("section, key, value, expected", [
    ("data", "fps", "8", "a finite number or null"),
    ("data", "frames", 8.0, "an integer"),
    ("train", "steps", True, "an integer"),
    ("train", "lr", float("nan"), "a finite number"),
    ("train", "betas", [0.9, "x"], "a list of a finite number"),
    ("adapter", "regimes", [0, "1"], "a list of an integer"),
    ("decoder", "attention", "yes", "true or false"),
    ("image", "patch", -0.5, "an integer or null"),
    ("", "prompt", 3, "a string"),
    ("", "data", ["clips"], "an object"),
])
def test_a_wrong_type_is_named_with_what_was_expected_and_found(section, key, value, expected):
    cfg = config(**({section: {key: value}} if section else {key: value}))
    name = f"{section}.{key}" if section else key
    with pytest.raises(TrainingError, match=rf"'{name}' must be {expected}, found {value!r}".replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)")):
        check_run_config(cfg)


def test_required_keys_and_known_modes():
    cfg = config()
    del cfg["data"]["folder"]
    with pytest.raises(TrainingError, match="either 'folder'.*found neither"):
        check_run_config(cfg)
    cfg["data"].update(folder="clips", shards="shards/{0..9}.tar")
    with pytest.raises(TrainingError, match="found both"):
        check_run_config(cfg)
    del cfg["data"]["folder"]
    assert check_run_config(cfg) is cfg
    with pytest.raises(TrainingError, match="'mode' must be one of"):
        check_run_config(config(mode="video"))
    with pytest.raises(TrainingError, match="JSON object"):
        check_run_config(["not", "an", "object"])


def test_the_cached_size_is_for_a_data_folders_latent_cache_only():
    sized = {"cache_height": 384, "cache_width": 576, "flip": True}
    assert check_run_config(config(data=sized))["data"]["cache_width"] == 576
    with pytest.raises(TrainingError, match=r"'data.cache_width' must be an integer, found 576.5"):
        check_run_config(config(data={"cache_width": 576.5}))
    streamed = config(data=sized)
    streamed["data"]["shards"] = streamed["data"].pop("folder")
    with pytest.raises(TrainingError, match=r"\['data.cache_height', 'data.cache_width'\] size the latent cache.*"
                                            r"streamed shards crop in pixel space"):
        check_run_config(streamed)
    with pytest.raises(TrainingError, match=r"mode 'decoder' reads frames, not a latent cache"):
        check_run_config(config(mode="decoder", data={"cache_height": 384}))


def test_the_validation_video_is_checked_and_needs_tensorboard():
    video = {"validate_every": 50, "validation": {"prompts": ["a fox"], "frames": 8, "steps": 4, "cfg": 3, "seed": 1}}
    assert check_run_config(config(monitor={"tensorboard": True, **video}))["monitor"]["validate_every"] == 50
    with pytest.raises(TrainingError, match=r"'monitor.validate_every' logs a validation video to TensorBoard; set "
                                            r"'monitor.tensorboard' to true"):
        check_run_config(config(monitor=video))
    with pytest.raises(TrainingError, match=r"'monitor.validation.prompts' must be a list of a string, found 'a fox'"):
        check_run_config(config(monitor={"tensorboard": True, "validate_every": 5, "validation": {"prompts": "a fox"}}))
    with pytest.raises(TrainingError, match=r"'monitor.validation.steps' must be at least 1, found 0"):
        check_run_config(config(monitor={"tensorboard": True, "validate_every": 5, "validation": {"steps": 0}}))
    with pytest.raises(TrainingError, match=r"'monitor.validate_every' must be 0 \(no validation video\)"):
        check_run_config(config(monitor={"tensorboard": True, "validate_every": -1}))
    # interpolation keyframes are every 4th frame: fewer than 5 frames is refused before training, not at step N
    with pytest.raises(TrainingError, match=r"'monitor.validation.frames' \(or 'data.frames'\) must be at least 5, found 4"):
        check_run_config(config(monitor={"tensorboard": True, "validate_every": 5, "validation": {"frames": 4}}))
    with pytest.raises(TrainingError, match=r"must be at least 5, found 4"):
        check_run_config(config(monitor={"tensorboard": True, "validate_every": 5}, data={"frames": 4}))
    assert check_run_config(config(mode="temporal", monitor={"tensorboard": True, "validate_every": 5}, data={"frames": 4}))


@pytest.mark.parametrize("sections, message", [
    (dict(train={"batch_size": 0}), "'train.batch_size' must be at least 1, found 0"),
    (dict(data={"width": 0}), "'data.width' must be at least 8, found 0"),
    (dict(mode="temporal", data={"frames": 1}), "clips of at least 2 frames: 'data.frames' must be at least 2, found 1"),
    (dict(data={"frames": 8}), "'data.frames' must be 5, 9, 13, ..., found 8; use 5 or 9"),
    (dict(data={"frames": 4}), "'data.frames' must be 5, 9, 13, ..., found 4; use 5 or 9"),
    (dict(data={}), "found 8; use 5 or 9"),   # the readers' default length is no interpolation clip
    (dict(mode="prediction", data={"frames": 3}, adapter={"context_frames": [0, 1, 3]}),
     "prediction from up to 3 context frames .* 'data.frames' must be at least 4, found 3"),
    # found at the first step (an embedding index out of range), silently (regime 2 trained as 0), or after
    # the model had loaded (a seed the generators cannot take, an unknown placement, empty crops)
    (dict(adapter={"regimes": [0, 2]}), r"'adapter.regimes' .* found \[0, 2\]"),
    (dict(adapter={"regimes": []}), r"'adapter.regimes' .* found \[\]"),
    (dict(adapter={"regimes": [2]}), r"'adapter.regimes' .* found \[2\]"),
    (dict(adapter={"regimes": [1, 1]}), r"'adapter.regimes' lists .* each once"),
    (dict(train={"seed": 2**62}), rf"'train.seed' must be between 0 and {2**31 - 1}, found {2**62}"),
    (dict(train={"seed": -1}), "'train.seed' must be between 0"),
    (dict(adapter={"placement": "lavie"}), r"'adapter.placement' must be one of \['videoldm', 'animatediff'\]"),
    (dict(adapter={"patch": -4}), "'adapter.patch' must be at least 1, found -4"),
    (dict(train={"text_dropout": 1.5}), r"'train.text_dropout' is the share of clips .* from 0 to 1, found 1.5"),
    (dict(image={"text_dropout": -0.1}), r"'image.text_dropout' is the share of clips .* found -0.1"),
    # found only after the checkpoint had loaded and the data was encoded, or named by a slot, not the key
    (dict(data={"fps": None}), r"'adapter.regimes' \[0, 1\] trains regime 1 \(4T-to-16T\) on clips read at 4 x "
                               r"'data.fps', which is not set"),
    (dict(data={"fps": 0.0}), r"'data.fps' is the rate clips are read at: a number above 0, .* found 0.0"),
    (dict(mode="vae", data={"frames": 0}), "'data.frames' must be at least 1, found 0"),
    (dict(vae={"kl_weight": -1e-6}), "'vae.kl_weight' must be at least 0, found -1e-06"),
    (dict(decoder={"disc_layers": 0}), "'decoder.disc_layers' must be at least 1, found 0"),
    (dict(adapter={"context_width": 0}), "'adapter.context_width' must be at least 1, found 0"),
    (dict(adapter={"kernel_t": 2}), r"'adapter.kernel_t' \(frames a temporal convolution spans, centred\) must be "
                                    r"odd, found 2"),
    (dict(adapter={"context_frames": [0, -1]}), r"'adapter.context_frames' are counts of given frames, 0 or more, "
                                                r"found \[-1\]"),
    (dict(mode="prediction", data={"frames": 8}, monitor={"tensorboard": True, "validate_every": 5,
                                                          "validation": {"frames": 2}}),
     r"the prediction validation video is given the first 2 frames .* must be at least 3, found 2"),
])
def test_values_the_trainer_cannot_use_are_refused_before_anything_loads(sections, message):
    cfg = config(**sections)
    if sections.get("data") == {}:
        del cfg["data"]["frames"]
    with pytest.raises(TrainingError, match=message):
        check_run_config(cfg)



def test_settings_a_continued_file_fixes_are_refused_and_unused_ones_named(caplog):
    """With adapter.init (or decoder.init) the saved spec builds the layers: a context_frames or
    placement given beside it would be silently dropped. Data settings of a path the run does not
    take are named in a warning."""
    import logging

    with pytest.raises(TrainingError, match=r"\['adapter.context_frames', 'adapter.context_width'\] describe the layers "
                                            r"of a fresh file, but 'adapter.init' / 'decoder.init' continues a saved one"):
        check_run_config(config(adapter={"init": "runs/a/adapter.safetensors"}))
    continued = config()
    continued["adapter"] = {"init": "runs/a/adapter.safetensors", "regimes": [0], "patch": None}
    assert check_run_config(continued)
    with pytest.raises(TrainingError, match=r"\['decoder.attention'\] describe the layers"):
        check_run_config(config(mode="decoder", decoder={"init": "d.safetensors"}))
    with caplog.at_level(logging.WARNING):
        check_run_config(config(mode="temporal", data={"shuffle": 100, "workers": 2}))
        check_run_config(config(mode="vae", data={"flip": True}))
        check_run_config(config(mode="image", train={"text_dropout": 0.2}))   # image pretraining reads image.text_dropout
    assert "['data.shuffle', 'data.workers'] have no effect in this run (mode 'temporal', a data folder)" in caplog.text
    assert "['train.gradient_checkpointing', 'train.text_dropout'] have no effect in this run (mode 'image'" in caplog.text
    assert "['data.flip', 'train.gradient_checkpointing'] have no effect in this run (mode 'vae'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):   # null and false ask for nothing: no warning
        check_run_config(config(mode="vae", data={"flip": False}, train={"gradient_checkpointing": False}))
    assert "have no effect" not in caplog.text


@pytest.mark.parametrize("sections", [
    dict(decoder={"disc_start": 0}),            # the discriminator on from the first step
    dict(decoder={"adversarial_weight": 0}),    # reconstruction only
    dict(decoder={"temporal_weight": 0.0}),
    dict(vae={"kl_weight": 0}),
    dict(train={"batch_size": 1}),
    dict(data={"width": 8, "height": 8}),
    dict(mode="temporal", data={"frames": 2}),
    dict(adapter={"kernel_t": 1}),
])
def test_the_least_value_of_each_range_is_accepted(sections):
    """The ranges are inclusive: 'must be at least N' takes N. A disc_start of 0 (the trainer's own
    `step >= disc_start` turns the discriminator on at step 0) refused would leave no way to train
    the discriminator from the start."""
    cfg = config(**sections)
    assert check_run_config(cfg) is cfg
