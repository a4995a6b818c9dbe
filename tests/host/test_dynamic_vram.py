"""The pack in a ComfyUI with DynamicVRAM on, the default on NVIDIA GPUs, as far as a CPU shows it.

A server with DynamicVRAM sets `comfy.memory_management.aimdo_enabled` and loads the real
comfy-aimdo library (main.py); each child here does both, in its own process, since some of the
failures were crashes. Two things follow that the rest of the suite never sees:
- ComfyUI's Linear is built without weights until a state dict loads one, so state_dict() no
  longer lists what a file must hold (every loader of the pack refused its own files);
- the dynamic patcher gives a model host buffers that are freed when their owner goes, which a
  Python deep copy freed twice (training crashed the process: heap corruption).
The patcher is built for a CUDA device that is never used: the class hands a CPU device the legacy
patcher. What needs CUDA itself (streaming weights through the virtual VRAM buffer) is not run.
"""

import os
import subprocess
import sys

from devtools.paths import REPO_ROOT

DYNAMIC_VRAM_HOST = """
import gc, importlib, torch
import comfy_aimdo.control
assert comfy_aimdo.control.init(), "the comfy-aimdo library did not load"   # before comfy, as main.py does
from devtools.comfy_in_process import init_comfy
pack = init_comfy()
import comfy.memory_management, comfy.model_management as mm, comfy.ops
from comfy.model_patcher import ModelPatcher, ModelPatcherDynamic
host = lambda name: importlib.import_module(f"{pack.__name__}.host.{name}")
core = lambda name: importlib.import_module(f"{pack.__name__}.videoldm_core.{name}")
host("model_folders").register_model_folders()
def dynamic_vram(on):   # what main.py sets when it enables DynamicVRAM: the patcher class and the flag
    comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic if on else ModelPatcher
    comfy.memory_management.aimdo_enabled = on
"""

LOADERS = DYNAMIC_VRAM_HOST + """
import folder_paths

def state(module):
    return {k: v.float() for k, v in module.state_dict().items()}

def loaded_everything(spec=None, weights=None):
    with torch.inference_mode():   # as loader nodes run
        model, clip, vae = host("bundle").load_bundle("videoldm_toy.safetensors")
        out = {"unet": state(model.model.diffusion_model), "clip": state(clip.cond_stage_model),
               "vae": state(vae.first_stage_model)}
        for name in folder_paths.get_filename_list("temporal_adapters"):
            out[name] = state(host("temporal_adapter").load_temporal_adapter(
                folder_paths.get_full_path("temporal_adapters", name), name).patcher.model)
        decoder = core("temporal_decoder")
        if spec is None:   # random weights, made once
            spec = decoder.spec_for_decoder(vae.first_stage_model.decoder, attention=True)
            weights = decoder.TemporalDecoder(spec).state_dict()
        out["temporal decoder"] = state(host("temporal_decoder").build_temporal_decoder(spec, weights, "test").model)
    return out, spec, weights

dynamic_vram(False)
legacy, spec, weights = loaded_everything()
dynamic_vram(True)
assert comfy.ops.manual_cast.Linear(2, 2).weight is None, "ComfyUI's Linear no longer defers its weights: this checks nothing"
dynamic, _, _ = loaded_everything(spec, weights)
assert dynamic.keys() == legacy.keys()
for part in legacy:
    assert dynamic[part].keys() == legacy[part].keys(), part
    for k, v in legacy[part].items():
        assert torch.equal(dynamic[part][k], v), (part, k)
print("loaded alike:", sorted(dynamic), flush=True)

name = next(k for k in weights if k.endswith(".weight") and weights[k].ndim == 2)   # a Linear's
bad = dict(weights, **{name: weights[name][:, :-1].clone()})
try:
    host("temporal_decoder").build_temporal_decoder(spec, bad, "'bad.safetensors'")
except core("temporal_decoder").TemporalDecoderFormatError as e:
    print("refused:", e, flush=True)
else:
    raise AssertionError("a misshapen Linear weight loaded")
"""

TRAINING = DYNAMIC_VRAM_HOST + """
dynamic_vram(True)
TrainingError = core("training.objective").TrainingError

with torch.inference_mode():   # as a loader node runs
    loaded, _, _ = host("bundle").load_bundle("videoldm_toy.safetensors")
user = ModelPatcherDynamic(loaded.model, load_device=torch.device("cuda", 0), offload_device=torch.device("cpu"))
user.cached_patcher_init = loaded.cached_patcher_init
assert user.is_dynamic() and hasattr(user.model, "dynamic_pins")
weights = dict(user.model.diffusion_model.named_parameters())
out = "diffusion_model.out.2.weight"
user.add_patches({out: (torch.zeros_like(weights["out.2.weight"]),)})

base = host("training").trainable_base(user)
assert type(base) is ModelPatcher, type(base)
assert base.model is not user.model and not hasattr(base.model, "dynamic_pins")
assert set(base.patches) == {out}, base.patches.keys()
copied = dict(base.model.diffusion_model.named_parameters())
assert copied.keys() == weights.keys()
for name, p in copied.items():
    assert not p.is_inference() and not p.requires_grad and torch.equal(p, weights[name]), name
# the trainable adapter runs in the legacy patcher too: a dynamic load would swap small layers'
# parameters for frozen copies, out of the optimizer's reach (on a CPU core makes every patcher a
# legacy one, so this child names the CUDA device it never loads to)
spec, adapter = host("temporal_adapter").fresh_adapter_for_model(base)
cpu_device, mm.get_torch_device = mm.get_torch_device, lambda: torch.device("cuda", 0)
try:
    denoiser = host("training").UNetDenoiser(base, adapter, torch.zeros(1, 77, 64))
finally:
    mm.get_torch_device = cpu_device
patchers = denoiser.model.get_additional_models_with_key("videoldm")
assert [type(p) for p in patchers] == [ModelPatcher] and patchers[0].model is adapter, patchers
del base, copied, denoiser, patchers
gc.collect()
print("copy freed", flush=True)

user.cached_patcher_init = None
try:
    host("training").trainable_base(user)
except TrainingError as e:
    print("refused:", e, flush=True)
else:
    raise AssertionError("copied a DynamicVRAM model with no way to load it again")

assert type(user) is ModelPatcherDynamic and set(user.patches) == {out}
assert all(p is weights[name] for name, p in user.model.diffusion_model.named_parameters())
del user, loaded
gc.collect()
print("user's model freed", flush=True)
"""


def run_child(script: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-3000:])
    return run.stdout


def test_every_loader_loads_the_same_weights_with_deferred_linear_weights():
    """Bundle (UNet, CLIP, VAE), each toy adapter, a temporal decoder with attention: the same
    weights as without DynamicVRAM, and a misshapen Linear weight (which ComfyUI's deferred Linear
    would take without a look) still refused by name."""
    out = run_child(LOADERS)
    assert "loaded alike: ['clip', 'temporal decoder', 'unet', 'vae', 'videoldm_toy_interpolator.safetensors'" in out
    refusal = next(line for line in out.splitlines() if line.startswith("refused:"))
    assert "'bad.safetensors'" in refusal and "wrong shape" in refusal


def test_training_copies_a_dynamic_vram_model_from_its_loader_and_leaves_it_intact():
    stdout = run_child(TRAINING)
    assert "copy freed" in stdout and "user's model freed" in stdout
    refusal = next(line for line in stdout.splitlines() if line.startswith("refused:"))
    assert "BaseModel" in refusal and "--disable-dynamic-vram" in refusal and "Load Checkpoint" in refusal
