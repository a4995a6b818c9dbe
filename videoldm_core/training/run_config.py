"""The training CLI's run configuration, checked before anything loads: every section refuses keys
it does not know and values of the wrong type, naming the key (`data.fps`), what was expected and
what was found. Types are written as Python annotations: `float` takes any finite real number (an
int too), `int` no bool, `X | None` also null, `list[X]` a JSON list of X."""

from __future__ import annotations

import logging
import types
import typing

from ..interpolation import FACTOR, REGIMES
from ..limits import is_finite_number
from ..temporal_adapter import PLACEMENTS
from .modes import MODE_NAMES, mode_named
from .objective import TrainingError

log = logging.getLogger(__name__)

PRETRAINING_MODES = ("vae", "image", "decoder")

SECTIONS: dict[str, dict[str, object]] = {
    "": {"checkpoint": str, "mode": str, "output": str, "prompt": str, "resume": bool,
         "adapter": dict, "data": dict, "train": dict, "decoder": dict, "vae": dict, "image": dict, "monitor": dict},
    "adapter": {"init": str | None, "context_frames": list[int] | None, "context_width": int, "regimes": list[int],
                "patch": int | None, "placement": str,
                # the placement's own settings (videoldm_core.placement)
                "kernel_t": int, "positional": str, "merge_strategy": str, "alpha": float, "text_context": bool,
                "max_len": int, "heads": int, "middle_block": bool},
    "data": {"folder": str, "frames": int, "fps": float | None, "width": int, "height": int, "crop": str,
             "on_bad": str, "captions": bool, "cache": str | None,
             # frames cached larger than width x height, cropped in latent space per step (training.crops)
             "cache_height": int, "cache_width": int,
             # streamed WebDataset shards instead of a folder (videoldm_core.training.shards)
             "shards": str | list[str], "shuffle": int, "workers": int, "flip": bool, "start": str},
    "train": {"steps": int, "lr": float, "batch_size": int, "warmup": int, "weight_decay": float,
              "betas": list[float], "grad_clip": float | None, "precision": str, "ema_decay": float | None,
              "gradient_checkpointing": bool, "checkpoint_every": int, "keep_checkpoints": int, "seed": int,
              "sharding": str, "text_dropout": float},
    "decoder": {"init": str | None, "attention": bool, "disc_start": int, "adversarial_weight": float,
                "disc_width": int, "disc_layers": int, "temporal_weight": float},
    "vae": {"kl_weight": float, "patch": int | None},
    "image": {"text_dropout": float, "patch": int | None},
    "monitor": {"tensorboard": bool, "validate_every": int, "validation": dict},
    # the validation video every `validate_every` steps (host/training_validation.py)
    "monitor.validation": {"prompts": list[str], "frames": int | None, "steps": int, "cfg": float, "seed": int},
}
REQUIRED = {"": ("checkpoint", "output", "data")}


def type_name(kind) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(type_name(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"a list of {type_name(typing.get_args(kind)[0])}"
    return {str: "a string", bool: "true or false", int: "an integer", float: "a finite number",
            dict: "an object", type(None): "null"}[kind]


def fits(value, kind) -> bool:
    if isinstance(kind, types.UnionType):
        return any(fits(value, k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(fits(v, typing.get_args(kind)[0]) for v in value)
    if kind is type(None):
        return value is None
    if kind is float:
        return is_finite_number(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def section_values(config: dict, section: str):
    """A section's values: "" the top level, "monitor.validation" a section inside "monitor"; {} when absent."""
    values = config
    for name in filter(None, section.split(".")):
        values = values.get(name, {}) if isinstance(values, dict) else {}
    return values


def check_monitor(monitor: dict, mode: str | None = None, clip_frames: int | None = None):
    every = monitor.get("validate_every", 0)
    if every < 0:
        raise TrainingError(f"run configuration: 'monitor.validate_every' must be 0 (no validation video) or a number "
                            f"of steps, found {every}.")
    if every and not monitor.get("tensorboard"):
        raise TrainingError("run configuration: 'monitor.validate_every' logs a validation video to TensorBoard; set "
                            "'monitor.tensorboard' to true (the training extra has tensorboard).")
    for key, least in (("steps", 1), ("frames", 2)):
        value = monitor.get("validation", {}).get(key)
        if value is not None and value < least:
            raise TrainingError(f"run configuration: 'monitor.validation.{key}' must be at least {least}, found {value}.")
    frames = monitor.get("validation", {}).get("frames") or clip_frames
    if every and mode == "interpolation" and frames is not None and frames < 5:
        # checked before training: found at the first validation, on rank 0 alone, it would stall the others
        raise TrainingError(f"run configuration: the interpolation validation video takes every 4th frame of a clip "
                            f"as a keyframe and needs 2: 'monitor.validation.frames' (or 'data.frames') must be at "
                            f"least 5, found {frames}.")


def check_run_config(config) -> dict:
    """`config` (a parsed JSON run configuration) if every section is well formed; else TrainingError."""
    if not isinstance(config, dict):
        raise TrainingError(f"the run configuration must be a JSON object, found {type(config).__name__}.")
    for section, known in SECTIONS.items():
        values = section_values(config, section)
        prefix = f"{section}." if section else ""
        if not isinstance(values, dict):
            continue   # reported by the top-level check of `section`
        unknown = sorted(set(values) - set(known))
        if unknown:
            where = f"in '{section}' " if section else "at the top level "
            raise TrainingError(f"unknown run configuration key(s) {where}{[prefix + k for k in unknown]}; "
                                f"expected some of {sorted(known)}.")
        for key in REQUIRED.get(section, ()):
            if key not in values:
                raise TrainingError(f"run configuration: '{prefix}{key}' is required.")
        for key, value in values.items():
            if not fits(value, known[key]):
                raise TrainingError(f"run configuration: '{prefix}{key}' must be {type_name(known[key])}, "
                                    f"found {value!r}.")
    data = config.get("data", {})
    check_monitor(config.get("monitor", {}), config.get("mode", "temporal"), data.get("frames"))
    if ("folder" in data) == ("shards" in data):
        raise TrainingError("run configuration: 'data' needs either 'folder' (a folder of clips) or 'shards' "
                            f"(WebDataset shards), found {'both' if 'folder' in data else 'neither'}.")
    mode = config.get("mode", "temporal")
    if mode not in MODE_NAMES + PRETRAINING_MODES:
        raise TrainingError(f"run configuration: 'mode' must be one of {list(MODE_NAMES + PRETRAINING_MODES)}, "
                            f"found {mode!r}.")
    cached = sorted(k for k in ("cache_height", "cache_width") if k in data)
    if cached and ("shards" in data or mode in ("vae", "decoder")):
        reader = "streamed shards crop in pixel space (data.crop)" if "shards" in data else f"mode {mode!r} reads frames"
        raise TrainingError(f"run configuration: {['data.' + k for k in cached]} size the latent cache of a data folder; "
                            f"{reader}, not a latent cache. Remove them.")
    if mode in PRETRAINING_MODES and "shards" in data:
        raise TrainingError(f"run configuration: data.shards streams clips for the modes {list(MODE_NAMES)}; mode "
                            f"{mode!r} reads a data folder ('data.folder').")
    check_ranges(config, mode)
    check_unused(config, mode)
    return config


# what continuing a saved file fixes: its spec says how the layers are built
ADAPTER_INIT_KEEPS = ("init", "regimes", "patch")


def check_unused(config: dict, mode: str):
    """Keys this run would ignore: settings of the layers a continued file fixes are refused (the run
    would not build what they say); settings of a data path the run does not take are named in a
    warning."""
    adapter, decoder = config.get("adapter", {}), config.get("decoder", {})
    fixed = [f"adapter.{k}" for k in adapter if adapter.get("init") and k not in ADAPTER_INIT_KEEPS]
    fixed += ["decoder.attention"] if decoder.get("init") and "attention" in decoder else []
    if fixed:
        raise TrainingError(f"run configuration: {fixed} describe the layers of a fresh file, but 'adapter.init' / "
                            f"'decoder.init' continues a saved one, whose spec fixes them; remove them.")
    data, train = config.get("data", {}), config.get("train", {})

    def given(values, key):   # null and false ask for nothing
        return values.get(key) not in (None, False)

    unused = [f"data.{k}" for k in (("on_bad", "cache", "cache_height", "cache_width") if "shards" in data
                                    else ("shuffle", "workers")) if given(data, k)]
    if mode in ("vae", "decoder"):   # these read frames: no latent cache, no latent flip, no text
        unused += [f"data.{k}" for k in ("flip", "cache", "captions") if given(data, k)]
    if mode in PRETRAINING_MODES:   # image pretraining's dropout is image.text_dropout
        unused += [f"train.{k}" for k in ("gradient_checkpointing", "text_dropout") if given(train, k)]
    if unused:
        log.warning("run configuration: %s have no effect in this run (mode %r, %s); they are ignored.", unused,
                    mode, "streamed shards" if "shards" in data else "a data folder")


DEFAULT_FRAMES = 8   # data.frames when absent (the clip length the readers cut)
# train.text_dropout when absent: the share of clips the temporal modes train on the empty prompt, as
# AnimateDiff's training configs do (image pretraining has its own, image.text_dropout, also 0.1)
DEFAULT_TEXT_DROPOUT = 0.1
# a training seed's range (the CLI's and Train Temporal Adapter's): the trainer derives its generators'
# seeds from it (seed x 1,000,003 + ...), which must stay within the 64 bits a generator takes
MAX_SEED = 2**31 - 1


def check_ranges(config: dict, mode: str):
    """The values whose range the trainer would find wrong only after the model is loaded and the data
    encoded (a batch of 0, clips a mode cannot learn from)."""
    data = config.get("data", {})
    for section, key, least in (("train", "batch_size", 1), ("data", "width", 8), ("data", "height", 8),
                                ("data", "frames", 1), ("data", "workers", 0), ("data", "shuffle", 0),
                                ("adapter", "patch", 1), ("adapter", "context_width", 1), ("adapter", "kernel_t", 1),
                                ("vae", "patch", 1), ("image", "patch", 1), ("vae", "kl_weight", 0),
                                ("decoder", "disc_layers", 1), ("decoder", "disc_width", 1), ("decoder", "disc_start", 0),
                                ("decoder", "adversarial_weight", 0), ("decoder", "temporal_weight", 0)):
        value = config.get(section, {}).get(key)
        if value is not None and value < least:
            raise TrainingError(f"run configuration: '{section}.{key}' must be at least {least}, found {value}.")
    fps = data.get("fps")
    if fps is not None and fps <= 0:
        raise TrainingError(f"run configuration: 'data.fps' is the rate clips are read at: a number above 0, or null "
                            f"for each source's own, found {fps}.")
    kernel_t = config.get("adapter", {}).get("kernel_t")
    if kernel_t is not None and kernel_t % 2 == 0:
        raise TrainingError(f"run configuration: 'adapter.kernel_t' (frames a temporal convolution spans, centred) "
                            f"must be odd, found {kernel_t}.")
    negative = [s for s in config.get("adapter", {}).get("context_frames") or () if s < 0]
    if negative:
        raise TrainingError(f"run configuration: 'adapter.context_frames' are counts of given frames, 0 or more, "
                            f"found {negative}.")
    for section in ("train", "image"):
        rate = config.get(section, {}).get("text_dropout", 0.0)
        if not 0.0 <= rate <= 1.0:
            raise TrainingError(f"run configuration: '{section}.text_dropout' is the share of clips trained on the "
                                f"empty prompt, from 0 to 1, found {rate}.")
    seed = config.get("train", {}).get("seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise TrainingError(f"run configuration: 'train.seed' must be between 0 and {MAX_SEED}, found {seed}.")
    adapter = config.get("adapter", {})
    if adapter.get("placement", PLACEMENTS[0]) not in PLACEMENTS:
        raise TrainingError(f"run configuration: 'adapter.placement' must be one of {list(PLACEMENTS)}, "
                            f"found {adapter['placement']!r}.")
    regimes = adapter.get("regimes", [0, 1])
    if not regimes or not set(regimes) <= set(REGIMES.values()) or len(set(regimes)) != len(regimes):
        raise TrainingError(f"run configuration: 'adapter.regimes' lists the interpolation regimes to train, each "
                            f"once: 0 (T-to-4T, clips at data.fps) and/or 1 (4T-to-16T, at 4x data.fps), found "
                            f"{regimes}.")
    if mode not in MODE_NAMES:
        return
    if mode_named(mode).has_regimes and 1 in regimes and not fps:
        raise TrainingError(f"run configuration: 'adapter.regimes' {regimes} trains regime 1 (4T-to-16T) on clips read "
                            "at 4 x 'data.fps', which is not set; set data.fps (the rate of regime 0's clips), or "
                            "train regime 0 alone ('adapter.regimes': [0]).")
    given = None if adapter.get("init") else adapter.get("context_frames") or mode_named(mode).default_context_frames
    problem = clip_frames_problem(mode, data.get("frames", DEFAULT_FRAMES), given, "'data.frames'",
                                  "'adapter.context_frames'")
    if problem:
        raise TrainingError(f"run configuration: {problem}.")
    monitor = config.get("monitor", {})
    frames = monitor.get("validation", {}).get("frames") or data.get("frames", DEFAULT_FRAMES)
    if monitor.get("validate_every") and mode == "prediction" and given and frames <= max(given):
        # found at the first validation, on rank 0 alone, it would stall the others
        raise TrainingError(f"run configuration: the prediction validation video is given the first "
                            f"{max(given)} frames ('adapter.context_frames' {list(given)}) and makes the rest: "
                            f"'monitor.validation.frames' (or 'data.frames') must be at least {max(given) + 1}, "
                            f"found {frames}.")


def clip_frames_problem(mode: str, frames: int, context_frames, name: str, context_name: str = "") -> str | None:
    """Why `mode` cannot learn from clips of `frames` frames (the input called `name`), or None: a
    step would find it only after the model is loaded and every clip encoded. `context_frames`: the
    context frame counts a prediction adapter is trained with (None: not known yet)."""
    if frames < 2:
        return f"temporal layers learn from clips of at least 2 frames: {name} must be at least 2, found {frames}"
    if mode_named(mode).has_regimes and (frames < 5 or (frames - 1) % FACTOR):
        low = max(5, frames - (frames - 1) % FACTOR)
        return (f"interpolation clips hold 4K − 3 frames (K ≥ 2 keyframes at 0, 4, 8, ...): {name} must be 5, 9, "
                f"13, ..., found {frames}; use {low} or {low + FACTOR}")
    if mode_named(mode).needs_context_encoder and not mode_named(mode).has_regimes and context_frames:
        if frames <= max(context_frames):
            stated = f" ({context_name} {list(context_frames)})" if context_name else ""
            return (f"prediction from up to {max(context_frames)} context frames{stated} needs clips longer than "
                    f"that: {name} must be at least {max(context_frames) + 1}, found {frames}")
    return None
