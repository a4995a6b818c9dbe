"""Fixtures of the host tier shared by several modules: a tiny SD1.x model with random-weight
prediction and plain adapters applied (`ctx`), two given latent frames (`given`), the demo bundle
with a folder of clips for train.py (`setup`), and tiny image and SVD-style temporal VAEs
(`vae_parts`, `vaes`)."""

import subprocess
import sys

import pytest
import torch

from devtools import tiny_bundles
from devtools.paths import REPO_ROOT


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """The demo bundle (a tiny SD1.x) and a folder of synthetic moving-shapes mp4 clips, for the
    modules that run train.py (made once: ~45 s)."""
    from devtools.synthetic_data import write_dataset

    root = tmp_path_factory.mktemp("cli")
    subprocess.run([sys.executable, "-m", "devtools.make_demo_bundle", str(root / "base")], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    write_dataset(root / "clips", 4, seed=0, frames=12, height=64, width=64, fps=30.0, as_="mp4")
    return root


@pytest.fixture(scope="module")
def ctx(pack_module, tiny_sd1):
    patch = pack_module("host.temporal_adapter")
    model, clip, vae = tiny_sd1

    def adapter(context=True, seed=0, std=0.05):
        spec, module = patch.fresh_adapter_for_model(model, context_frames=(0, 1, 2) if context else (), context_width=16)
        torch.manual_seed(seed)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=std)
        return patch.build_adapter_patcher(spec, module.state_dict(), source="test")

    predictor = patch.apply_adapter(model, adapter(), "predictor")
    plain = patch.apply_adapter(model, adapter(context=False), "plain")
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square moving left"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return dict(patch=patch, predictor=predictor, plain=plain, positive=positive, negative=negative, vae=vae,
                guider=pack_module("host.guidance"), sampling=pack_module("host.sampling"), context=pack_module("videoldm_core.context"),
                nodes=pack_module("nodes"))


@pytest.fixture(scope="module")
def given():
    torch.manual_seed(11)
    return torch.randn(2, 4, 8, 8)


@pytest.fixture(scope="module")
def vae_parts(pack_module):
    """(tiny SD-layout image VAE state dict, its ddconfig, a random temporal decoder state dict in
    SVD's key layout built with ComfyUI's own temporal_ae.VideoDecoder)."""
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    spec = tiny_bundles.tiny_sd1_spec()
    bundle = tiny_bundles.random_bundle_state_dict(spec, seed=7)
    image_sd = {k[len("first_stage_model."):]: v for k, v in bundle.items() if k.startswith("first_stage_model.")}
    ddconfig = dict(spec.vae_config["ddconfig"])
    video_decoder = VideoDecoder(video_kernel_size=[3, 1, 1], alpha=0.0, **ddconfig)
    torch.manual_seed(8)
    with torch.no_grad():
        for name, p in video_decoder.named_parameters():
            p.copy_(image_sd[f"decoder.{name}"] if f"decoder.{name}" in image_sd else torch.randn_like(p) * 0.05)
    return image_sd, ddconfig, video_decoder


@pytest.fixture(scope="module")
def vaes(pack_module, vae_parts):
    temporal_vae = pack_module("host.temporal_decoder")
    image_sd, _, video_decoder = vae_parts
    svd_sd = dict(image_sd, **{f"decoder.{k}": v for k, v in video_decoder.state_dict().items()})
    return temporal_vae, temporal_vae.load_temporal_vae(image_sd, "image"), temporal_vae.load_temporal_vae(svd_sd, "svd")
