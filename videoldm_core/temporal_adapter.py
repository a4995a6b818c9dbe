"""Temporal adapters: the temporal layers of a video model, kept apart from the frozen image model.

An `AdapterSpec` says what an adapter is (base family, placement, one config per slot, positions,
where it came from, the noise schedule and clip-wide norms it was trained with). A `TemporalAdapter` is the module built from it; its
state-dict keys are "<slot path>.<parameter>", e.g. "input_blocks.1.0.time_stack.in_layers.2.weight"
(the SVD/sgm names without the UNet prefix). The native file is safetensors with the spec as JSON
under `videoldm_adapter` in the metadata.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from torch import nn

from .context import ContextEncoder
from .families import FAMILY_NAMES
from .interpolation import MAX_AUGMENTATION, InterpolationEmbedding
from .layer_factory import placed
from .noise_schedule import BetaSchedule, ScheduleError, check_clip_norms, trained_with
from .placement import SpatialLayer, blocks, motion_module_layer
from .slots import MotionModuleSlot, ResBlockSlot, TransformerSlot
from .state_dict import check_weights, loadable_shapes
from .errors import VideoLDMError
from .metadata_spec import MAX_WIDTH, MetadataSpec, expect_int, expect_number
from .weights_file import WeightsFile, WeightsFileError, save_safetensors

ADAPTER_METADATA_KEY = "videoldm_adapter"
ADAPTER_FORMAT_VERSION = 2
PLACEMENTS = ("videoldm", "animatediff")
SLOT_CLASSES = {"resblock": ResBlockSlot, "transformer": TransformerSlot, "motion_module": MotionModuleSlot}
# where slots sit: a spatial layer of the UNet (Video LDM placement) or a whole block (AnimateDiff's)
SLOT_PATHS = {"videoldm": re.compile(r"^(?:(?:input|output)_blocks\.\d{1,3}\.\d{1,2}|middle_block\.\d{1,2})$"),
              "animatediff": re.compile(r"^(?:(?:input|output)_blocks\.\d{1,3}|middle_block)$")}
MAX_TABLE_LENGTH = 4096      # frames in a positional table: the most any node samples
MAX_KERNEL_T = 15            # frames a temporal convolution spans
MAX_LEVELS = 16              # resolutions of a context encoder; regimes of an interpolation embedding


class AdapterFormatError(WeightsFileError):
    """A file or state dict is not a temporal adapter this pack can read."""


class AdapterCompatibilityError(VideoLDMError):
    """An adapter does not fit the model it is applied to."""


@dataclass(frozen=True)
class AdapterSpec(MetadataSpec):
    """Version 2 (version 1 files are migrated on reading: `migrate`)."""

    METADATA_KEY = ADAPTER_METADATA_KEY
    FORMAT_ERROR = AdapterFormatError

    family: str
    placement: str
    slots: dict
    max_frames: Optional[int] = None      # hard limit of an absolute positional table, else None
    source: str = "native"                # "native", "animatediff-v2", "svd", ...
    description: str = ""
    version: int = ADAPTER_FORMAT_VERSION
    # prediction (§3.1.1): the encoder of c_S {"in_channels", "width", "levels"}, or None; and the
    # numbers of context frames S it was trained with, e.g. [0, 1, 2]
    context_encoder: Optional[dict] = None
    context_frames: list = field(default_factory=list)
    # interpolation (§3.1.1): the embedding of the regime label and augmentation level
    # {"emb_channels", "regimes", "augmentation": [low, high] (the levels it was trained with)}, or
    # None (then only the default regime, T→4T, is accepted)
    interpolation: Optional[dict] = None
    # the discrete schedule it was trained with (a BetaSchedule as a dict), None: the base model's own
    noise_schedule: Optional[dict] = None
    # the image model's norms that ran over all frames of a clip in training (CLIP_NORMS), else per frame
    clip_norms: list = field(default_factory=list)

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """Version 1 → 2: `extra` and `trained_frames` (never read) are dropped; the schedule and the
        clip-wide norms are those of the recorded source's original code (native: the base model's
        own, per frame); an interpolation embedding gets the trainer's augmentation range of then."""
        if data.get("version", 1) != 1:
            return data
        data = {k: v for k, v in data.items() if k not in ("extra", "trained_frames")}
        source = data.get("source", "native")
        if not isinstance(source, str):
            raise AdapterFormatError(f"source: expected a string, found {json.dumps(source)[:40]}.")
        recipe = trained_with(source)
        data.setdefault("noise_schedule", recipe.noise_schedule.to_dict() if recipe.noise_schedule else None)
        data.setdefault("clip_norms", list(recipe.clip_norms))
        if isinstance(data.get("slots"), dict):   # version 1 had no motion-module norm: the source's own
            data["slots"] = {path: {"group_norm": recipe.motion_norm, **slot}
                             if isinstance(slot, dict) and slot.get("kind") == "motion_module" else slot
                             for path, slot in data["slots"].items()}
        if isinstance(data.get("interpolation"), dict):
            data["interpolation"] = {"augmentation": [0.0, MAX_AUGMENTATION], **data["interpolation"]}
        return {**data, "version": 2}

    def __post_init__(self):
        if self.family not in FAMILY_NAMES:
            raise AdapterFormatError(f"expected family one of {FAMILY_NAMES}, found {self.family!r}.")
        if self.placement not in PLACEMENTS:
            raise AdapterFormatError(f"expected placement one of {PLACEMENTS}, found {self.placement!r}.")
        if self.version != ADAPTER_FORMAT_VERSION:
            raise AdapterFormatError(f"expected format version {ADAPTER_FORMAT_VERSION} (older versions are migrated when "
                                     f"read), found {self.version!r}; a newer pack may read it.")
        if not isinstance(self.slots, dict) or not self.slots:
            raise AdapterFormatError(f"expected at least one slot, found {type(self.slots).__name__} {self.slots!r:.40}.")
        for path, config in self.slots.items():
            kind = config.get("kind") if isinstance(config, dict) else None
            if kind not in SLOT_CLASSES:
                raise AdapterFormatError(f"slot {path!r}: expected kind one of {tuple(SLOT_CLASSES)}, found {kind!r:.40}.")
            if not SLOT_PATHS[self.placement].match(path):
                raise AdapterFormatError(f"slot {path!r:.60}: expected the path of a UNet "
                                         f"{'block' if self.placement == 'animatediff' else 'layer'} for the "
                                         f"{self.placement} placement (e.g. 'input_blocks.1"
                                         f"{'' if self.placement == 'animatediff' else '.0'}').")
            check_slot_arguments(path, config)
        if self.max_frames is not None:
            expect_int("max_frames", self.max_frames, AdapterFormatError, maximum=MAX_TABLE_LENGTH)
            tables = {path: config.get("max_len", _default(config["kind"], "max_len")) for path, config in self.slots.items()
                      if _default(config["kind"], "max_len", None) is not None}
            shortest = min(tables.items(), key=lambda item: item[1], default=None)
            if shortest is not None and shortest[1] < self.max_frames:
                raise AdapterFormatError(f"max_frames: {self.max_frames} frames stated, but slot {shortest[0]!r} holds "
                                         f"positions for {shortest[1]}; expected at most {shortest[1]}.")
        for name, value in (("source", self.source), ("description", self.description)):
            if not isinstance(value, str):
                raise AdapterFormatError(f"{name}: expected text, found {type(value).__name__}.")
        if not isinstance(self.context_frames, list):
            raise AdapterFormatError(f"context_frames: expected a list, found {type(self.context_frames).__name__}.")
        for frames in self.context_frames:
            expect_int("context_frames", frames, AdapterFormatError, minimum=0, maximum=MAX_TABLE_LENGTH)
        if self.context_encoder is not None:
            expected = {"in_channels", "width", "levels"}
            found = set(self.context_encoder) if isinstance(self.context_encoder, dict) else set()
            if found != expected:
                raise AdapterFormatError(f"context_encoder: expected the fields {sorted(expected)}, found {sorted(found)}.")
            for name in sorted(expected):
                expect_int(f"context_encoder.{name}", self.context_encoder[name], AdapterFormatError,
                           maximum=MAX_LEVELS if name == "levels" else MAX_WIDTH)
            widths = {c.get("context_channels", 0) for c in self.slots.values()}
            if widths != {self.context_encoder["width"]}:
                raise AdapterFormatError(f"context_encoder: every slot must read context_channels="
                                         f"{self.context_encoder['width']}, found {sorted(widths)}.")
        if self.interpolation is not None:
            self._check_interpolation()
        try:
            if self.noise_schedule is not None:
                BetaSchedule.from_dict(self.noise_schedule)
            check_clip_norms(self.clip_norms)
        except ScheduleError as e:
            raise AdapterFormatError(str(e)) from None

    def _check_interpolation(self):
        required, found = {"emb_channels", "regimes"}, set(self.interpolation) if isinstance(self.interpolation, dict) else set()
        if not required <= found <= required | {"augmentation"}:
            raise AdapterFormatError(f"interpolation: expected the fields {sorted(required)} (and optionally "
                                     f"'augmentation'), found {sorted(found)}.")
        expect_int("interpolation.emb_channels", self.interpolation["emb_channels"], AdapterFormatError, maximum=MAX_WIDTH)
        expect_int("interpolation.regimes", self.interpolation["regimes"], AdapterFormatError, maximum=MAX_LEVELS)
        levels = self.interpolation.get("augmentation", [0.0, 0.0])
        if (not isinstance(levels, (list, tuple)) or len(levels) != 2
                or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in levels) or levels[0] > levels[1]):
            raise AdapterFormatError(f"interpolation.augmentation: expected [low, high] with 0 <= low <= high <= 1, "
                                     f"found {levels!r}.")

    @property
    def beta_schedule(self) -> Optional[BetaSchedule]:
        """The schedule it was trained with; None: the base model's own."""
        return None if self.noise_schedule is None else BetaSchedule.from_dict(self.noise_schedule)

    @property
    def augmentation_range(self) -> tuple[float, float]:
        """The interpolation conditioning-augmentation levels it was trained with."""
        low, high = (self.interpolation or {}).get("augmentation", (0.0, 0.0))
        return float(low), float(high)

    @property
    def has_context_encoder(self) -> bool:
        return self.context_encoder is not None

    @property
    def has_interpolation_embedding(self) -> bool:
        return self.interpolation is not None


def _default(kind: str, name: str, missing=inspect.Parameter.empty):
    """The default of a slot class's argument `name`, or `missing` when it takes no such argument."""
    parameter = inspect.signature(SLOT_CLASSES[kind]).parameters.get(name)
    return missing if parameter is None else parameter.default


def check_slot_arguments(path: str, config: dict):
    """Each field of a slot config against the slot class's signature: known names only, every
    required one present, sizes positive integers within bounds, numbers finite, text text (a
    negative or string size would otherwise surface as a raw torch error, or a huge one allocate)."""
    parameters = inspect.signature(SLOT_CLASSES[config["kind"]]).parameters
    accepted = [name for name in parameters if name != "operations"]
    for name in config:
        if name != "kind" and name not in accepted:
            raise AdapterFormatError(f"slot {path!r}: unknown field {name!r:.40}; expected only {accepted}.")
    for name in accepted:
        parameter = parameters[name]
        if name not in config:
            if parameter.default is inspect.Parameter.empty:
                raise AdapterFormatError(f"slot {path!r}: expected the field {name!r}, found none.")
            continue
        value, annotation, where = config[name], str(parameter.annotation), f"slot {path!r}: {name}"
        if value is None and annotation.startswith("Optional"):
            continue
        if "int" in annotation:
            expect_int(where, value, AdapterFormatError, minimum=0 if parameter.default == 0 else 1,
                       maximum={"max_len": MAX_TABLE_LENGTH, "kernel_t": MAX_KERNEL_T}.get(name, MAX_WIDTH))
            if name == "kernel_t" and value % 2 == 0:
                raise AdapterFormatError(f"{where}: expected an odd number of frames, found {value}.")
        elif "float" in annotation:
            expect_number(where, value, AdapterFormatError)
        elif annotation in ("str", "bool") and type(value).__name__ != annotation:
            raise AdapterFormatError(f"{where}: expected {'text' if annotation == 'str' else 'true or false'}, "
                                     f"found {type(value).__name__}.")
    # values each of which is in range but that the layer cannot run with (found at sampling otherwise)
    if config.get("max_period", 10000.0) <= 1:   # its logarithm scales the sinusoidal frequencies
        raise AdapterFormatError(f"slot {path!r}: max_period: expected a number above 1, found {config['max_period']}.")
    if config["kind"] == "transformer" and config["heads"] * config["dim_head"] != config["channels"]:
        raise AdapterFormatError(f"slot {path!r}: expected heads × dim_head equal to its {config['channels']} channels "
                                 f"(the temporal blocks attend over the spatial block's tokens), found "
                                 f"{config['heads']} × {config['dim_head']} = {config['heads'] * config['dim_head']}.")
    if "heads" in config and "dim_head" not in config and config["heads"] > config["channels"]:
        raise AdapterFormatError(f"slot {path!r}: heads: expected at most its {config['channels']} channels (each head "
                                 f"takes channels // heads of them), found {config['heads']}.")


def set_submodule(root: nn.Module, path: str, module: nn.Module):
    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.ModuleDict())
        root = getattr(root, part)
    root.add_module(name, module)


class TemporalAdapter(nn.Module):
    def __init__(self, spec: AdapterSpec, operations=nn, dtype=None, device=None):
        super().__init__()
        self.spec = spec
        operations = placed(operations, dtype, device)
        if spec.context_encoder is not None:
            self.context_encoder = ContextEncoder(**spec.context_encoder, operations=operations)
        if spec.interpolation is not None:
            self.interpolation_embed = InterpolationEmbedding(spec.interpolation["emb_channels"], spec.interpolation["regimes"],
                                                              operations=operations)
        for path, config in spec.slots.items():
            kwargs = {k: v for k, v in config.items() if k != "kind"}
            set_submodule(self, path, SLOT_CLASSES[config["kind"]](**kwargs, operations=operations))

    def slot(self, path: str) -> nn.Module:
        return self.get_submodule(path)

    def load_weights(self, state_dict: dict, source: str = "adapter", assign: bool = False):
        """Strict load with a message that lists some of what is missing, unexpected or misshapen."""
        check_weights(loadable_shapes(self), state_dict, f"{source}: the weights do not match the adapter spec",
                      AdapterFormatError)
        self.load_state_dict(state_dict, strict=True, assign=assign)
        return self


def save_adapter(path: str | Path, adapter: TemporalAdapter | dict, spec: Optional[AdapterSpec] = None):
    """The native file: `adapter`'s weights (a module, or its state dict) with the spec in the metadata."""
    spec = spec or adapter.spec
    weights = adapter.state_dict() if isinstance(adapter, nn.Module) else adapter
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_safetensors(path, tensors, {ADAPTER_METADATA_KEY: spec.to_json()})


def read_adapter_spec(path: str | Path) -> Optional[AdapterSpec]:
    """The spec of a native adapter file, None for a weights file without one; a file that is not
    one is refused by name (`WeightsFile`)."""
    path = Path(path)
    text = WeightsFile(path, path.name, AdapterFormatError).metadata.get(ADAPTER_METADATA_KEY)
    return None if text is None else AdapterSpec.from_json(text, source=f"'{path.name}'")


# --- compatibility with a model ------------------------------------------------------------------


def resolve_slots(spec: AdapterSpec, layout: Iterable[SpatialLayer], model_family: str, source: str = "adapter"
                  ) -> dict[str, str]:
    """Maps each slot to the path of the spatial layer it runs with, checking that the layer
    exists and has the slot's width. Raises AdapterCompatibilityError naming both families."""
    layout = list(layout)
    by_path = {layer.path: layer for layer in layout}
    by_block = blocks(layout)

    def mismatch(detail: str):
        advice = (f"Load an adapter made for {model_family}." if spec.family != model_family else
                  f"Both are {model_family}, but the adapter was made for a UNet of other widths; load one made for "
                  f"this model's widths.")
        return AdapterCompatibilityError(
            f"Temporal adapter {source} was made for {spec.family} ({_describe(spec)}) but the model is "
            f"{model_family} ({_describe_layout(layout)}): {detail}. {advice}")

    if spec.family != model_family:
        raise mismatch("the base families differ")
    resolved = {}
    for path, config in spec.slots.items():
        if config["kind"] == "motion_module":
            layer = motion_module_layer(by_block.get(path, []))
        else:
            layer = by_path.get(path)
            if layer is not None and layer.kind != config["kind"]:
                layer = None
        if layer is None:
            raise mismatch(f"the model has no {config['kind']} layer for slot {path!r}")
        if layer.channels != config["channels"]:
            raise mismatch(f"slot {path!r} has {config['channels']} channels, the model's layer {layer.path} has {layer.channels}")
        context = config.get("context_dim")
        if config["kind"] == "transformer" and context is not None and layer.context_dim != context:
            raise mismatch(f"slot {path!r} reads text context of width {context}, the model's is {layer.context_dim}")
        resolved[path] = layer.path
    return resolved


def _widths(channels, contexts) -> str:
    text = "/".join(map(str, sorted(set(channels)))) + " channels"
    contexts = sorted({c for c in contexts if c})
    return text + (f", context {'/'.join(map(str, contexts))}" if contexts else "")


def _describe(spec: AdapterSpec) -> str:
    return _widths((c["channels"] for c in spec.slots.values()), (c.get("context_dim") for c in spec.slots.values()))


def _describe_layout(layout: list[SpatialLayer]) -> str:
    return _widths((layer.channels for layer in layout), (layer.context_dim for layer in layout))
