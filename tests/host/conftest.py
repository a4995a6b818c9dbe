"""Fixtures of the host tier shared by several modules: a tiny SD1.x model with random-weight
prediction and plain adapters applied (`ctx`), and two given latent frames (`given`)."""

import pytest
import torch


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
                guider=pack_module("host.guidance"), context=pack_module("videoldm_core.context"),
                nodes=pack_module("nodes"))


@pytest.fixture(scope="module")
def given():
    torch.manual_seed(11)
    return torch.randn(2, 4, 8, 8)
