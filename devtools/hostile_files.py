"""Small weight files of every format the loaders read, valid and hostile, and the random mutations
the fuzz suites apply to them: what the hostile-file tests (unit, host, server tiers) and the loader
fuzz suites start from. Torch and safetensors only.

The memory bombs of issue 20 are files of a few kilobytes whose spec declares far more than the
weights they ship: loaded the old way, each allocated gigabytes before its tensors were compared
with the spec.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from devtools.process_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from videoldm_core.temporal_adapter import ADAPTER_METADATA_KEY, AdapterSpec, TemporalAdapter
from videoldm_core.temporal_decoder import TEMPORAL_DECODER_METADATA_KEY, TemporalDecoder, TemporalDecoderSpec

# the narrowest slots (32 channels: their group norms have 32 groups), tens of kilobytes each
SMALL_ADAPTER_SLOTS = {
    "input_blocks.1.0": dict(kind="resblock", channels=32, emb_channels=16),
    "input_blocks.1.1": dict(kind="transformer", channels=32, heads=2, dim_head=16, context_dim=16),
}
SMALL_MOTION_SLOTS = {"input_blocks.1": dict(kind="motion_module", channels=32, heads=8, max_len=8)}
SMALL_DECODER = dict(blocks={"mid.block_1": 32, "up.0.block.0": 32}, out_channels=3)

BOMB_CHANNELS = 24_000          # the adapter of issue 20: 7.5 GiB once built
BOMB_TABLE_LENGTH = 30_000_000  # a motion module's positional table: the server was killed
BOMB_OUT_CHANNELS = 30_000      # a temporal-decoder add-on's output: the server was killed


def _random(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=generator) * 0.05 if v.is_floating_point() else v).contiguous()
            for k, v in module.state_dict().items()}


def small_adapter(slots: dict = SMALL_ADAPTER_SLOTS, placement: str = "videoldm", seed: int = 0):
    """(spec, weights) of a small native adapter."""
    spec = AdapterSpec("SD1.x", placement, json.loads(json.dumps(slots)))
    return spec, _random(TemporalAdapter(spec), seed)


def small_decoder(seed: int = 0):
    """(spec, weights) of a small temporal-decoder add-on."""
    spec = TemporalDecoderSpec(**json.loads(json.dumps(SMALL_DECODER)))
    return spec, _random(TemporalDecoder(spec), seed)


def write_adapter(path: str | Path, spec_json: dict | str, weights: dict) -> Path:
    """A native adapter file with any spec text (valid or not) beside `weights`."""
    text = spec_json if isinstance(spec_json, str) else json.dumps(spec_json)
    save_file(weights, str(path), metadata={ADAPTER_METADATA_KEY: text})
    return Path(path)


def write_addon(path: str | Path, spec_json: dict | str, weights: dict) -> Path:
    """A temporal-decoder add-on file with any spec text beside `weights`."""
    text = spec_json if isinstance(spec_json, str) else json.dumps(spec_json)
    save_file(weights, str(path), metadata={TEMPORAL_DECODER_METADATA_KEY: text})
    return Path(path)


def small_bundle_spec() -> dict:
    """A bundle spec (SD1.x, 2 levels, a 2-layer text encoder of width 64 and a 1,000-token vocabulary)
    for header-only bundle files: beside its token and position embeddings, no weights."""
    return {"family": "SD1.x", "prediction": "eps", "description": "", "version": 1, "extra": {},
            "unet_config": {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
                            "num_res_blocks": [1, 1], "transformer_depth": [1, 1, 0, 0], "context_dim": 64,
                            "num_heads": 4, "num_head_channels": -1},
            "vae_config": {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64,
                                                        "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                                                        "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}},
            "text_encoder_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "vocab_size": 1000, "max_position_embeddings": 77}}


def spec_dict(spec) -> dict:
    return json.loads(spec.to_json())


def channel_bomb_adapter(path: str | Path) -> Path:
    """A 30 kB adapter whose resblock slot declares BOMB_CHANNELS channels."""
    spec, weights = small_adapter({"input_blocks.1.0": SMALL_ADAPTER_SLOTS["input_blocks.1.0"]})
    data = spec_dict(spec)
    data["slots"]["input_blocks.1.0"].update(channels=BOMB_CHANNELS, emb_channels=BOMB_CHANNELS)
    return write_adapter(path, data, weights)


def table_bomb_motion_module(path: str | Path) -> Path:
    """A motion-module adapter whose slot declares a BOMB_TABLE_LENGTH-entry positional table."""
    spec, weights = small_adapter(SMALL_MOTION_SLOTS, placement="animatediff")
    data = spec_dict(spec)
    data["slots"]["input_blocks.1"]["max_len"] = BOMB_TABLE_LENGTH
    return write_adapter(path, data, weights)


def channel_bomb_addon(path: str | Path) -> Path:
    """A temporal-decoder add-on whose output convolution declares BOMB_OUT_CHANNELS channels."""
    spec, weights = small_decoder()
    data = spec_dict(spec)
    data["out_channels"] = BOMB_OUT_CHANNELS
    return write_addon(path, data, weights)


MEMORY_BOMBS = {"channel_bomb.safetensors": channel_bomb_adapter, "table_bomb.safetensors": table_bomb_motion_module,
                "decoder_bomb.safetensors": channel_bomb_addon}


# --- mutations: what the fuzz suites do to valid files -----------------------------------------

HOSTILE_VALUES = [-1, 0, 1, 3, 31, 4097, 65537, 30_000_000, 2 ** 63, 10 ** 30, 1.5, -0.0, float("nan"), float("inf"),
                  "32", "", "input_blocks.1.0", None, True, False, [], {}, [1, 2], {"kind": "resblock"}, "x" * 300]
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool, torch.int8]


def _json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_paths(value, prefix + (i,))


def mutate_spec(rng: random.Random, spec: dict) -> tuple[dict, str]:
    """(a copy of `spec` with one value replaced, a key deleted, renamed or added, what changed)."""
    spec = json.loads(json.dumps(spec))
    path = rng.choice([p for p in _json_paths(spec) if p])
    parent = spec
    for part in path[:-1]:
        parent = parent[part]
    leaf = path[-1]
    action = rng.choice(["replace", "replace", "replace", "delete", "rename", "add"])
    if action == "replace" or not isinstance(parent, dict):
        value = rng.choice(HOSTILE_VALUES)
        parent[leaf] = value
        return spec, f"spec {'.'.join(map(str, path))} = {value!r:.40}"
    if action == "delete":
        del parent[leaf]
        return spec, f"spec {'.'.join(map(str, path))} deleted"
    if action == "rename":
        new = rng.choice(["__class__", "", "input_blocks.999.0", "x.y", "middle_block", "up.0.block.0", leaf + "_"])
        parent[new] = parent.pop(leaf)
        return spec, f"spec key {'.'.join(map(str, path))} renamed {new!r}"
    parent[rng.choice(["unknown", "extra", "kind", "channels"])] = rng.choice(HOSTILE_VALUES)
    return spec, f"spec {'.'.join(map(str, path[:-1]))} gains a field"


def mutate_weights(rng: random.Random, weights: dict) -> tuple[dict, str]:
    """(a copy of `weights` with one tensor reshaped, recast, made non-finite, dropped, renamed, made a
    scalar, or a stray one added, what changed)."""
    weights = dict(weights)
    key = rng.choice(sorted(weights))
    value = weights[key]
    action = rng.choice(["shape", "shape", "dtype", "nan", "delete", "rename", "add", "scalar"])
    if action == "nan" and value.numel() == 0:   # an earlier mutation emptied it
        action = "delete"
    if action == "shape":
        shape = list(value.shape) or [1]
        i = rng.randrange(len(shape))
        shape[i] = rng.choice([0, 1, shape[i] * 2, shape[i] + 1])
        if rng.random() < 0.3:
            shape.append(rng.choice([1, 2]))
        weights[key] = torch.zeros(shape, dtype=value.dtype)
    elif action == "dtype":
        weights[key] = value.to(rng.choice(DTYPES))
    elif action == "nan":
        weights[key] = value.float().clone().reshape(-1).index_fill_(0, torch.tensor([0]), rng.choice(
            [float("nan"), float("inf"), -float("inf")])).reshape(value.shape)
    elif action == "delete":
        del weights[key]
    elif action == "rename":
        weights[rng.choice([key + "_", "x." + key, key.replace(".", "..", 1), key.replace("0", "9999", 1)])] = weights.pop(key)
    elif action == "add":
        weights[rng.choice(["stray.weight", key.rsplit(".", 1)[0] + ".extra", "down_blocks.7.motion_modules.0.x"])] = torch.zeros(2)
    else:
        weights[key] = torch.tensor(1.0)
    return weights, f"tensor {key}: {action}"


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """(a file's bytes truncated, with bytes overwritten in its header or anywhere, or with another
    header length, what changed)."""
    header = 8 + struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else len(data)
    action = rng.choice(["truncate", "flip header", "flip anywhere", "length"])
    if action == "truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"truncated at {cut} of {len(data)}"
    if action == "length":
        length = rng.choice([0, 1, header - 9, header - 7, header + 100, 2 ** 63, rng.randrange(2 ** 32)])
        return struct.pack("<Q", max(0, length)) + data[8:], f"header length {length}"
    data = bytearray(data)
    end = min(header, len(data)) if action == "flip header" else len(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(end)
        data[i] = rng.randrange(256)
    return bytes(data), f"{action}"


def refusal_and_peak_growth(run, errors) -> tuple[BaseException, int]:
    """(the error among `errors` that `run()` raised, how far this process's peak RSS rose above
    its RSS before); AssertionError if `run()` returned."""
    reset_peak_rss()
    before = rss_bytes()
    try:
        run()
    except errors as e:
        return e, peak_rss_bytes() - before
    raise AssertionError(f"{run} returned; expected one of {errors}")


def adapter_prompt(name: str, filename_prefix: str = "temporal_adapters/hostile") -> dict:
    """An API prompt that loads the adapter file `name` and saves it back (so it runs to the end)."""
    return {"1": {"class_type": "VideoLDMLoadTemporalAdapter", "inputs": {"adapter_name": name}},
            "2": {"class_type": "VideoLDMSaveTemporalAdapter",
                  "inputs": {"temporal_adapter": ["1", 0], "filename_prefix": filename_prefix}}}

