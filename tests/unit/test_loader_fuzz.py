"""Fuzzing the loaders' parsers: random mutations of small valid files of every format the pack
reads (native adapters, motion modules in the pack's format and AnimateDiff's, SVD temporal layers,
pickled checkpoints, temporal-decoder add-ons, bundle headers): header bytes, the header's length,
spec values, tensor shapes, dtypes and values, keys, truncation. Every case must end in a load
whose result builds, or in one of the pack's own errors (a VideoLDMError) - never a raw exception.

The default run takes DEFAULT_CASES cases (about 10 s); `-m fuzz_long` runs LONG_CASES (about 75 s).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from devtools import hostile_files as hf
from devtools.hostile_files import mutate_bytes, mutate_spec, mutate_weights
from devtools.public_layouts import animatediff_state_dict
from videoldm_core.bundle import BUNDLE_METADATA_KEY, check_stated_sizes, open_bundle
from videoldm_core.errors import VideoLDMError
from videoldm_core.importers import read_adapter_file
from videoldm_core.temporal_adapter import TemporalAdapter
from videoldm_core.temporal_decoder import TemporalDecoder, read_addon_file

DEFAULT_CASES = 1000
LONG_CASES = 5000


# --- the valid files the mutations start from ---------------------------------------------------


def _svd_layers() -> dict:
    """SVD's temporal layers (the native keys are sgm's names) under the UNet prefix, no metadata."""
    slots = {"input_blocks.1.0": dict(kind="resblock", channels=64, emb_channels=16),
             "input_blocks.1.1": dict(kind="transformer", channels=64, heads=1, dim_head=64, context_dim=16)}
    _, weights = hf.small_adapter(slots)
    return {f"model.diffusion_model.{k}": v for k, v in weights.items()}


def _animatediff_layout() -> dict:
    """Two motion modules in AnimateDiff's layout (the first and the fourth down block: SD1.5)."""
    state_dict = animatediff_state_dict((32, 32, 32, 32), pe_len=8)
    return {k: v.contiguous() for k, v in state_dict.items()
            if k.startswith(("down_blocks.0.motion_modules.0.", "down_blocks.3.motion_modules.0."))}


def _bundle_header() -> tuple[dict, dict]:
    spec = hf.small_bundle_spec()
    weights = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(1000, 64).half(),
               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.randn(77, 64).half()}
    return spec, weights


def seeds() -> list[dict]:
    """Each format: its weights, its metadata key and spec (or None), the suffix, and the loader."""
    adapter, adapter_weights = hf.small_adapter()
    motion, motion_weights = hf.small_adapter(hf.SMALL_MOTION_SLOTS, placement="animatediff")
    decoder, decoder_weights = hf.small_decoder()
    bundle, bundle_weights = _bundle_header()
    return [
        dict(format="native adapter", weights=adapter_weights, key="videoldm_adapter", spec=hf.spec_dict(adapter), load=load_adapter),
        dict(format="native motion module", weights=motion_weights, key="videoldm_adapter", spec=hf.spec_dict(motion), load=load_adapter),
        dict(format="AnimateDiff layout", weights=_animatediff_layout(), key=None, spec=None, load=load_adapter),
        dict(format="AnimateDiff checkpoint", weights=_animatediff_layout(), key=None, spec=None, load=load_adapter, suffix=".ckpt"),
        dict(format="SVD temporal layers", weights=_svd_layers(), key=None, spec=None, load=load_adapter),
        dict(format="decoder add-on", weights=decoder_weights, key="videoldm_temporal_decoder", spec=hf.spec_dict(decoder), load=load_addon),
        dict(format="bundle header", weights=bundle_weights, key=BUNDLE_METADATA_KEY, spec=bundle, load=load_bundle_header),
    ]


def load_adapter(path: Path):
    spec, weights = read_adapter_file(path, path.name)
    TemporalAdapter(spec).load_weights(weights)   # what the loader accepts must build and load


def load_addon(path: Path):
    spec, weights = read_addon_file(path, path.name)
    TemporalDecoder(spec).load_weights(weights)


def load_bundle_header(path: Path):
    spec, file = open_bundle(path, path.name)
    check_stated_sizes(spec, file.shapes, file.source)


def write(seed: dict, path: Path, weights: dict, spec):
    if seed.get("suffix") == ".ckpt":
        torch.save(weights, path)
        return
    metadata = None if seed["key"] is None else {seed["key"]: spec if isinstance(spec, str) else json.dumps(spec)}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path), metadata=metadata)


def run_case(seed: dict, rng: random.Random, folder: Path) -> str:
    """Writes one mutated file and loads it; returns the mutation, raising AssertionError if the
    loader ended in anything but success or the pack's own error."""
    path = folder / f"case{seed.get('suffix', '.safetensors')}"
    weights, spec, described = seed["weights"], seed["spec"], []
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choice(["spec", "weights", "bytes"] if spec is not None else ["weights", "bytes"])
        if kind == "spec":
            spec, what = mutate_spec(rng, spec)
            described.append(what)
        elif kind == "weights":
            weights, what = mutate_weights(rng, weights)
            described.append(what)
    write(seed, path, weights, spec)
    if kind == "bytes" or rng.random() < 0.15:
        data, what = mutate_bytes(rng, path.read_bytes())
        path.write_bytes(data)
        described.append(what)
    description = f"{seed['format']}: " + "; ".join(described)
    try:
        seed["load"](path)
    except VideoLDMError:
        pass
    except Exception as e:   # anything else is a finding
        raise AssertionError(f"{description} -> raw {type(e).__name__}: {e}") from e
    return description


def fuzz(cases: int, folder: Path) -> float:
    started = time.perf_counter()
    formats = seeds()
    findings = []
    for case in range(cases):
        rng = random.Random(case)
        try:
            run_case(formats[case % len(formats)], rng, folder)
        except AssertionError as e:
            findings.append(f"case {case}: {e}")
    assert not findings, f"{len(findings)} of {cases} cases ended in raw exceptions:\n" + "\n".join(findings[:10])
    return time.perf_counter() - started


def test_every_unmutated_seed_loads(tmp_path):
    for seed in seeds():
        path = tmp_path / f"seed{seed.get('suffix', '.safetensors')}"
        write(seed, path, seed["weights"], seed["spec"])
        seed["load"](path)


def test_mutated_files_load_or_fail_with_the_packs_error(tmp_path, one_thread, capsys):
    seconds = fuzz(DEFAULT_CASES, tmp_path)
    with capsys.disabled():
        print(f"\nloader fuzz: {DEFAULT_CASES} cases in {seconds:.1f} s")


@pytest.mark.fuzz_long   # deselected unless -m selects fuzz_long (tests/conftest.py)
def test_mutated_files_long_run(tmp_path, one_thread, capsys):
    seconds = fuzz(LONG_CASES, tmp_path)
    with capsys.disabled():
        print(f"\nloader fuzz (long): {LONG_CASES} cases in {seconds:.1f} s")
