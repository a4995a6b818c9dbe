"""Model bundles: a whole image LDM (UNet, KL autoencoder, CLIP text encoder) in one
safetensors file whose metadata states the architecture.

ComfyUI's checkpoint loader guesses the model family from weight shapes and only knows
full-size Stable Diffusion shapes. A bundle says what it is instead, so small models in the
real SD architectures (the pack's demo and test models, and the toy family it trains) load
through the same host classes as a full checkpoint. The weights use the usual checkpoint key
layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`); only the JSON
under `videoldm_bundle` in the metadata is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .families import BUNDLE_FAMILY_NAMES, family_named
from .metadata_spec import MetadataSpec

BUNDLE_METADATA_KEY = "videoldm_bundle"
BUNDLE_FORMAT_VERSION = 1

PREDICTIONS = ("eps", "v")

# Component name -> key prefix in the state dict (the layout of SD checkpoints).
COMPONENT_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.",
}

_REQUIRED_UNET_KEYS = (
    "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
    "context_dim", "transformer_depth",
)
_REQUIRED_VAE_KEYS = ("ddconfig", "embed_dim")
_REQUIRED_TEXT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class BundleFormatError(ValueError):
    """A file is not a valid Video LDM bundle; the message says what was expected and found."""


@dataclass(frozen=True)
class BundleSpec(MetadataSpec):
    """What a bundle holds: enough to build every component without looking at weights."""

    METADATA_KEY = BUNDLE_METADATA_KEY
    FORMAT_ERROR = BundleFormatError

    family: str
    prediction: str
    unet_config: dict
    vae_config: dict
    text_encoder_config: dict
    description: str = ""
    version: int = BUNDLE_FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        _expect(self.family in BUNDLE_FAMILY_NAMES, f"family one of {BUNDLE_FAMILY_NAMES}", repr(self.family))
        _expect(self.prediction in PREDICTIONS, f"prediction one of {PREDICTIONS}", repr(self.prediction))
        _expect(isinstance(self.version, int) and 1 <= self.version <= BUNDLE_FORMAT_VERSION,
                f"format version 1..{BUNDLE_FORMAT_VERSION} (a newer pack may read newer files)",
                repr(self.version))
        _require_keys("unet_config", self.unet_config, _REQUIRED_UNET_KEYS)
        _require_keys("vae_config", self.vae_config, _REQUIRED_VAE_KEYS)
        _require_keys("text_encoder_config", self.text_encoder_config, _REQUIRED_TEXT_KEYS)
        _expect(self.unet_config["context_dim"] == self.text_encoder_config["hidden_size"],
                "unet_config.context_dim equal to text_encoder_config.hidden_size",
                f"{self.unet_config['context_dim']} vs {self.text_encoder_config['hidden_size']}")
        image_channels = 3 if family_named(self.family).concat_image else 0
        _expect(self.unet_config["in_channels"] == self.latent_channels + image_channels,
                f"unet_config.in_channels = {self.latent_channels} latent channels"
                + (" + 3 low-res image channels" if image_channels else ""), str(self.unet_config["in_channels"]))
        scale = self.vae_config.get("scale_factor", 1.0)
        _expect(isinstance(scale, (int, float)) and scale > 0, "vae_config.scale_factor a positive number", repr(scale))

    @property
    def latent_channels(self) -> int:
        return int(self.vae_config["ddconfig"]["z_channels"])

    @property
    def latent_scale_factor(self) -> float | None:
        """The latent format's scale factor (latents are multiplied by it before diffusion); None
        keeps the family's own (SD1.x 0.18215, x4 upscaler 0.08333)."""
        return self.vae_config.get("scale_factor")

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side: 2 ** (number of VAE resolution levels - 1)."""
        return 2 ** (len(self.vae_config["ddconfig"]["ch_mult"]) - 1)


def _expect(ok: bool, expected: str, found: str):
    if not ok:
        raise BundleFormatError(f"expected {expected}, found {found}.")


def _require_keys(name: str, config, keys):
    _expect(isinstance(config, dict), f"{name} to be an object", type(config).__name__)
    missing = [k for k in keys if k not in config]
    _expect(not missing, f"{name} to define {list(keys)}", f"missing {missing}")


def read_bundle_spec(path: str | Path) -> BundleSpec:
    """Reads only the header of `path`: cheap, and raised before any weights are touched."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        raise BundleFormatError(f"'{path.name}': expected a .safetensors bundle, found a '{path.suffix}' file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for broken headers
        raise BundleFormatError(f"'{path.name}' is not a readable safetensors file ({e}).") from None
    if BUNDLE_METADATA_KEY not in metadata:
        raise BundleFormatError(
            f"'{path.name}' has no '{BUNDLE_METADATA_KEY}' metadata, so it is not a Video LDM bundle. "
            "A full-size SD checkpoint loads with core 'Load Checkpoint' instead.")
    return BundleSpec.from_json(metadata[BUNDLE_METADATA_KEY], source=f"'{path.name}'")


def split_components(state_dict: dict[str, torch.Tensor], source: str = "bundle") -> dict[str, dict[str, torch.Tensor]]:
    """Splits a bundle state dict by component, keeping the full keys; every component must be present."""
    parts = {name: {} for name in COMPONENT_PREFIXES}
    stray = []
    for key, value in state_dict.items():
        for name, prefix in COMPONENT_PREFIXES.items():
            if key.startswith(prefix):
                parts[name][key] = value
                break
        else:
            stray.append(key)
    if stray:
        raise BundleFormatError(f"{source}: keys outside {list(COMPONENT_PREFIXES.values())}: {stray[:5]}.")
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise BundleFormatError(f"{source}: expected weights for {list(COMPONENT_PREFIXES)}, found none for {empty}.")
    return parts


def save_bundle(path: str | Path, spec: BundleSpec, state_dict: dict[str, torch.Tensor]) -> None:
    split_components(state_dict, source=f"'{Path(path).name}'")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={BUNDLE_METADATA_KEY: spec.to_json()})
