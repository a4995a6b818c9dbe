"""Through a real server: an AnimateDiff v1 motion module (its own schedule and clip-wide norms on
the patched clone) sampled, then the input MODEL sampled after it in the same prompt, gives the
MODEL's output bit for bit as a prompt without the module does."""

import pytest
from safetensors.torch import load_file, save_file

from devtools.public_layouts import VARIANTS, animatediff_state_dict

BUNDLE = "videoldm_demo_tiny.safetensors"


def nodes(after_patched: bool) -> dict:
    prompt = {
        "1": {"class_type": "VideoLDMLoadBundle", "inputs": {"bundle_name": BUNDLE}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square moving left", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
    }
    sampler = {"seed": 3, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
               "positive": ["2", 0], "negative": ["3", 0]}
    latent = ["4", 0]
    if after_patched:
        prompt["5"] = {"class_type": "VideoLDMLoadTemporalAdapter", "inputs": {"adapter_name": "test_mm_v1.safetensors"}}
        prompt["6"] = {"class_type": "VideoLDMApplyTemporalAdapter",
                       "inputs": {"model": ["1", 0], "temporal_adapter": ["5", 0], "strength": 1.0,
                                  "attention_distance": 0, "noise_schedule": "auto"}}
        prompt["7"] = {"class_type": "KSampler", "inputs": {**sampler, "model": ["6", 0], "latent_image": ["4", 0]}}
        prompt["8"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["7", 0], "multiplier": 0.0}}
        prompt["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "clip_norms/video"}}
        latent = ["8", 0]   # zeros again, but only once the patched clone has sampled
    prompt["10"] = {"class_type": "KSampler", "inputs": {**sampler, "model": ["1", 0], "latent_image": latent}}
    prompt["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "clip_norms/image"}}
    return prompt


@pytest.fixture(scope="module")
def v1_module(server_base_dir):
    folder = server_base_dir / "models" / "temporal_adapters"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(animatediff_state_dict(**VARIANTS["v1"]), str(folder / "test_mm_v1.safetensors"))


def latent_of(server, run, prefix):
    [path] = [p for p in server.output_files(run) if p.name.startswith(prefix)]
    return load_file(str(path))["latent_tensor"]


def test_the_input_model_is_bit_identical_after_a_v1_clone_sampled_in_the_same_prompt(server, v1_module):
    import torch

    alone = server.run_prompt(nodes(after_patched=False))
    assert alone.status == "success", alone.error_message() or server.log_tail()
    both = server.run_prompt(nodes(after_patched=True))
    assert both.status == "success", both.error_message() or server.log_tail()
    image_alone, image_after = latent_of(server, alone, "image"), latent_of(server, both, "image")
    assert torch.equal(image_alone, image_after)
    assert (latent_of(server, both, "video") - image_after).abs().max() > 1e-3, "the motion module changed nothing"
