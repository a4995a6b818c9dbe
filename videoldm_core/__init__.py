"""Host-independent PyTorch library for Video LDM ("Align your Latents", Blattmann et al., CVPR 2023).

Imports torch, einops and safetensors only; never `comfy`. The ComfyUI nodes in `nodes/` are thin
wrappers over what lives here.
"""

__version__ = "0.1.0"
