"""AnimateDiff motion modules (guoyww/AnimateDiff and derivatives) -> the AnimateDiff placement.

Original key layout, per motion module of width C (8 heads):
  down_blocks.{i}.motion_modules.{j}.temporal_transformer.{norm, proj_in, proj_out,
      transformer_blocks.0.{attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0,pos_encoder.pe}, norms.{0,1}, ff, ff_norm}}
  mid_block.motion_modules.0.*        (v2 only)
  up_blocks.{i}.motion_modules.{j}.*
Variants: v1 (pe length 24), v2 (mid block, 32), v3 (32, no mid), SDXL beta (3 down blocks),
AnimateLCM (no pe buffers: the table is recomputed, length 64), HotshotXL (`temporal_attentions.N.`
and `pos_encoder.positional_encoding`). Both SD1.5 and SDXL UNets have two ResBlocks per level, so
motion module (i, j) follows input block 1 + 3i + j and output block 3i + j.

The spec records how the original code ran each variant (`noise_schedule.TRAINED_WITH`): its noise
schedule, which image-model norms ran over the whole clip, and the motion modules' own norm.
"""

from __future__ import annotations

import re

import torch

from ..temporal_adapter import AdapterFormatError, AdapterSpec
from ..families import SD1, SDXL
from ..noise_schedule import trained_with
from ..positional import sinusoidal_embedding
from ..weights_file import TensorShape

ANIMATELCM_MAX_LEN = 64
MODULES_PER_BLOCK = {"down_blocks": 2, "up_blocks": 3, "mid_block": 1}
# parts a derivative trains with its motion modules, which the modules need at sampling
COMPANIONS = {"conv_in.": "PIA's image-conditioned input convolution (9 channels)",
              "img_encoder.": "AnimateLCM-I2V's image encoder"}
_ATTENTION = re.compile(r"^(transformer_blocks\.\d+\.attention_blocks\.\d+)\.")
_MODULE = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?motion_modules\.(\d+)\.temporal_transformer\.(.+)$")


def looks_like_animatediff(state_dict) -> bool:
    return any(".motion_modules." in k or ".temporal_attentions." in k for k in state_dict)


def _hotshot_to_animatediff(state_dict):
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.temporal_attentions\.(\d+)\.", r".motion_modules.\1.temporal_transformer.", key)
        key = key.replace("pos_encoder.positional_encoding", "pos_encoder.pe")
        out[key] = value
    return out


def import_animatediff(state_dict: dict, source: str = "motion module") -> tuple[AdapterSpec, dict]:
    hotshot = any(k.endswith("pos_encoder.positional_encoding") for k in state_dict)
    if hotshot:
        state_dict = _hotshot_to_animatediff(state_dict)
    modules = _motion_modules(state_dict, source)
    family = _family(state_dict, source)
    pe_lengths = {v.shape[1] for m in modules.values() for k, v in m.items() if k.endswith("pos_encoder.pe")}
    if len(pe_lengths) > 1:
        raise AdapterFormatError(f"{source}: positional tables of different lengths {sorted(pe_lengths)}.")
    lcm = not pe_lengths   # AnimateLCM ships no positional tables (HotshotXL's are renamed above)
    max_len = pe_lengths.pop() if pe_lengths else ANIMATELCM_MAX_LEN
    source_name = f"animatediff-{_version(modules, family, max_len, hotshot, lcm)}"
    recipe = trained_with(source_name)
    slots, native = _slots_and_weights(modules, max_len, recipe.motion_norm, source)
    spec = AdapterSpec(family=family, placement="animatediff", slots=slots, max_frames=max_len, source=source_name,
                       noise_schedule=recipe.noise_schedule and recipe.noise_schedule.to_dict(),
                       clip_norms=list(recipe.clip_norms))
    return spec, native


def _motion_modules(state_dict: dict, source: str) -> dict[str, dict]:
    """{UNet block path: {key inside its temporal_transformer: weight}}; a file with keys outside
    AnimateDiff's layout, or with parts the modules were trained beside, is refused."""
    modules: dict[str, dict] = {}
    ignored = []
    for key, value in state_dict.items():
        m = _MODULE.match(key)
        if m is None:
            ignored.append(key)
            continue
        kind, level, index, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        # two ResBlocks per level down (so two modules), three up, one module in the middle: another
        # index would land on a neighbour's slot and replace its weights
        if index >= MODULES_PER_BLOCK[kind] or (kind == "mid_block") != (level is None):
            raise AdapterFormatError(f"{source}: motion module key {key[:80]!r} is outside AnimateDiff's layout "
                                     f"(expected {kind}{'' if kind == 'mid_block' else '.<level>'}.motion_modules.<0.."
                                     f"{MODULES_PER_BLOCK[kind] - 1}>).")
        if kind == "down_blocks":
            path = f"input_blocks.{1 + 3 * int(level) + index}"
        elif kind == "up_blocks":
            path = f"output_blocks.{3 * int(level) + index}"
        else:
            path = "middle_block"
        modules.setdefault(path, {})[rest] = value
    if not modules:
        raise AdapterFormatError(f"{source}: no AnimateDiff motion-module keys "
                                 f"('down_blocks.N.motion_modules.M.temporal_transformer.*'); found e.g. {sorted(state_dict)[:3]}.")
    stray = [k for k in ignored if "temporal" in k or "motion" in k]
    if stray:
        raise AdapterFormatError(f"{source}: motion-module keys in an unknown layout, e.g. {stray[:3]}.")
    for prefix, what in COMPANIONS.items():
        found = [k for k in ignored if k.startswith(prefix)]
        if found:
            raise AdapterFormatError(f"{source}: beside its motion modules this file holds {what} ({found[0]!r}, "
                                     f"{len(found)} keys), which the pack does not run; loaded without it, the "
                                     f"modules would not run as they were trained. Use a plain motion module.")
    return modules


def _family(state_dict: dict, source: str) -> str:
    """SD1.5's four levels down, or SDXL's three."""
    down_levels = {int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")}
    top = max(down_levels, default=-1)
    if top not in (2, 3):
        raise AdapterFormatError(f"{source}: expected motion modules in 4 down blocks (SD1.5) or 3 (SDXL) "
                                 f"('down_blocks.N.motion_modules.M.*'), found {top + 1}.")
    return SD1.name if top == 3 else SDXL.name


def _version(modules: dict, family: str, max_len: int, hotshot: bool, lcm: bool) -> str:
    """The release a file is (a name of noise_schedule.TRAINED_WITH, less its "animatediff-"): v1
    and v3 hold the same modules, told apart by their tables' length (24 and 32)."""
    if hotshot:
        return "hotshotxl"
    if lcm:
        return "animatelcm"
    if family == SDXL.name:
        return "sdxl"
    if "middle_block" in modules:
        return "v2"
    return "v3" if max_len == 32 else "v1"


def _slots_and_weights(modules: dict, max_len: int, motion_norm, source: str) -> tuple[dict, dict]:
    """The spec's slots and the weights in the pack's names; a file without positional tables
    (AnimateLCM) gets them recomputed, from a header only their shape (the tables are made once
    the file's shapes have been checked)."""
    slots, native = {}, {}
    for path, weights in sorted(modules.items()):
        if "proj_in.weight" not in weights:
            raise AdapterFormatError(f"{source}: motion module at {path} has no proj_in.weight.")
        channels = weights["proj_in.weight"].shape[0]
        slots[path] = dict(kind="motion_module", channels=channels, heads=8, max_len=max_len, group_norm=motion_norm)
        for name, value in weights.items():
            native[f"{path}.temporal_transformer.{name}"] = value
        for attn in {m.group(1) for m in map(_ATTENTION.match, weights) if m}:
            pe_key = f"{path}.temporal_transformer.{attn}.pos_encoder.pe"
            if pe_key not in native:
                native[pe_key] = (sinusoidal_embedding(torch.arange(max_len), channels, interleaved=True)[None]
                                  if isinstance(weights["proj_in.weight"], torch.Tensor)
                                  else TensorShape((1, max_len, channels), "F32"))
    return slots, native
