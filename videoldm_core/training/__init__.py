"""Training the temporal parts of Video LDM on frozen spatial layers (paper §3: only φ is trained).

Torch only, like the rest of videoldm_core: the host builds the frozen base model and hands the
trainer a `denoiser` callable; see nodes/training_host.py for the ComfyUI side."""
