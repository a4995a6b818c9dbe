"""Training from a MODEL that ComfyUI's DynamicVRAM has held, the default on NVIDIA GPUs.

That patcher gives the model host buffers of the real comfy-aimdo library (loaded here as main.py
loads it; host buffers need no GPU), which are freed when their owner goes. A Python deep copy of
such a model freed them twice and killed the process at exit (SIGSEGV, seen here before the fix);
training now takes a fresh copy from the loader, as core does for its own copies. The child runs
in its own process because the failure is a crash. Its patcher names a CUDA device, never used:
the class hands any CPU device the legacy patcher instead.
"""

import os
import subprocess
import sys

from devtools.paths import REPO_ROOT

CHILD = """
import gc, importlib, torch
import comfy_aimdo.control
assert comfy_aimdo.control.init(), "the comfy-aimdo library did not load"   # before comfy, as main.py does
from devtools.comfy_in_process import init_comfy
pack = init_comfy()
from comfy.model_patcher import ModelPatcher, ModelPatcherDynamic
host = lambda name: importlib.import_module(f"{pack.__name__}.host.{name}")
host("model_folders").register_model_folders()
TrainingError = importlib.import_module(f"{pack.__name__}.videoldm_core.training.objective").TrainingError

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
del base, copied
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


def test_training_copies_a_dynamic_vram_model_from_its_loader_and_leaves_it_intact():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-3000:])
    assert "copy freed" in run.stdout and "user's model freed" in run.stdout
    refusal = next(line for line in run.stdout.splitlines() if line.startswith("refused:"))
    assert "BaseModel" in refusal and "--disable-dynamic-vram" in refusal and "Load Checkpoint" in refusal
