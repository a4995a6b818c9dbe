"""The toy family's reproduce command (`python -m devtools.toy_family`) runs its whole chain of
train.py stages (here with --quick: 2 steps each, and --shards: the predictor and x4-temporal
stages stream their clips from WebDataset shards, so the data.shards path runs in the chain), and
what it writes, like the committed family in toy/, loads through the pack's own loaders in
ComfyUI: both bundles, the prediction, interpolation and x4 adapters, and the temporal-decoder add-on."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from devtools.paths import REPO_ROOT
from devtools.toy_family import NAMES as KEYS, family_file

NAMES = tuple(KEYS.values())


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    run = subprocess.run([sys.executable, "-m", "devtools.toy_family", "--quick", "--shards", "--work", str(root / "work"),
                          "--out", str(root / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    for stage in ("predictor", "x4-temporal"):   # streamed: clips decoded from shards, encoded per step
        assert "0 broken clip(s) skipped" in (root / "work" / stage / "train.log").read_text(), stage
    return root / "out"


COMMITTED = REPO_ROOT / "toy"


@pytest.mark.parametrize("which", ["quick", "committed"])
def test_the_chain_writes_every_model_in_fp16_within_25_mb(which, request):
    family = request.getfixturevalue("family") if which == "quick" else COMMITTED
    provenance = json.loads((family / "provenance.json").read_text())
    assert provenance["command"].endswith("--quick") == (which == "quick")
    assert provenance.get("streamed", []) == (["predictor", "x4-temporal"] if which == "quick" else [])
    assert list(provenance["stages"]) == ["vae", "image", "x4-image", "predictor", "interpolator", "decoder", "x4-temporal"]
    assert sorted(provenance["bytes"]) == sorted(NAMES)
    total = sum(family_file(family, key).stat().st_size for key in KEYS)
    assert total == provenance["total_bytes"] <= 25_000_000
    for key in KEYS:
        floats = [v.dtype for v in load_file(str(family_file(family, key))).values() if v.is_floating_point()]
        assert floats and set(floats) == {torch.float16}, key


@pytest.mark.parametrize("which", ["quick", "committed"])
def test_every_file_loads_through_the_pack(which, request, pack_module):
    import comfy.model_base

    family = request.getfixturevalue("family") if which == "quick" else COMMITTED
    bundle_host, bundle = pack_module("host.bundle"), pack_module("videoldm_core.bundle")
    loaded = {}
    for key in ("base", "x4"):
        path = family_file(family, key)
        loaded[key] = bundle_host.build_components(bundle.read_bundle_spec(path), load_file(str(path)), source=KEYS[key])
    base, x4 = loaded["base"][0], loaded["x4"][0]
    assert type(base.model) is comfy.model_base.BaseModel and type(x4.model) is comfy.model_base.SD_X4Upscaler
    scale = bundle.read_bundle_spec(family_file(family, "base")).latent_scale_factor
    assert scale and base.model.latent_format.scale_factor == x4.model.latent_format.scale_factor == scale  # one VAE

    adapters = pack_module("host.temporal_adapter")
    predictor, interpolator, x4_temporal = (adapters.load_temporal_adapter(str(family_file(family, key)), KEYS[key])
                                            for key in ("predictor", "interpolator", "x4-temporal"))
    assert predictor.spec.has_context_encoder and predictor.spec.context_frames == [0, 1, 2]
    assert interpolator.spec.has_interpolation_embedding
    assert x4_temporal.spec.family == "SD-x4-upscaler"

    temporal_vae = pack_module("host.temporal_decoder")
    from comfy.utils import load_torch_file

    addon = temporal_vae.read_addon_file(str(family_file(family, "decoder")), KEYS["decoder"])
    vae = temporal_vae.load_temporal_vae(load_torch_file(str(family_file(family, "base"))), KEYS["base"], addon)
    with torch.inference_mode():
        frames = temporal_vae.decode_video(vae, torch.randn(5, 4, 16, 16), 17, 1)
    assert frames.shape == (5, 64, 64, 3)


def test_the_evaluation_runs_every_ablation_on_the_family(family, tmp_path, capsys):
    """devtools.toy_eval on the quick family (1 seed, 1 clip, 1 step): four ablations, a baseline and
    an 'ours' number each, and a verdict line per ablation (the numbers of 2-step models mean nothing)."""
    import math

    from devtools import toy_eval

    out = tmp_path / "eval.json"
    assert toy_eval.main(["--family", str(family), "--seeds", "1", "--videos", "1", "--steps", "1", "--upscale-steps", "1",
                           "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == list(toy_eval.ABLATIONS)
    for per_seed in results.values():
        assert len(per_seed["baseline"]) == len(per_seed["ours"]) == 1
        assert not any(math.isnan(v) for v in per_seed["baseline"] + per_seed["ours"])
    printed = capsys.readouterr().out
    assert sum("direction" in line for line in printed.splitlines()) == 4


@pytest.fixture(scope="module")
def committed(pack):
    from devtools.toy_eval import Family

    return Family(COMMITTED)


def test_the_committed_temporal_upscaler_follows_the_motion_better_than_per_frame_upscaling(committed):
    """Ablation 3 of devtools.toy_eval on one held-out clip (8 frames, 64 → 256 px): the frame-to-frame
    change of the upscaled video against the true 256 px clip's (the paper: FVD 165.98 → 45.39)."""
    from devtools.toy_eval import ablation_upscaler

    with torch.inference_mode():
        run = ablation_upscaler(committed, seed=0, count=1, steps=10, cfg=4.0)
    assert run["ours"][0] < run["baseline"][0], run


def test_the_evaluation_verdict_reads_the_paired_margin_against_its_spread():
    """The verdict line: the paper's direction needs baseline − ours > 0 per seed on average, and the
    margin's seed-to-seed spread (paired: both sides see the same clips and noise) below it."""
    from devtools.toy_eval import verdict

    assert "margin > every spread" in verdict([10.0, 11.0, 12.0], [5.0, 6.0, 7.0])
    assert "paired margin > its spread, within the unpaired spread" in verdict([10.0, 20.0, 30.0], [8.0, 18.0, 28.5])
    assert "within spread" in verdict([10.0, 10.0, 10.0], [12.0, 8.0, 9.0])
    assert "NOT the paper's direction" in verdict([1.0, 1.0], [2.0, 2.0])


def test_the_committed_temporal_decoder_flickers_less_than_the_image_decoder(committed):
    """Ablation 2 of devtools.toy_eval on three held-out clips (8 frames at 30 fps): the temporal-
    difference error of the decoded video against the true frames (the paper: reconstruction FVD
    390.88 → 32.94)."""
    from devtools.toy_eval import ablation_decoder

    with torch.inference_mode():
        run = ablation_decoder(committed, seed=0, count=3)
    assert sum(run["ours"]) < sum(run["baseline"]), run
