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

from .families import BUNDLE_FAMILY_NAMES, family_named
from .metadata_spec import MAX_WIDTH, MetadataSpec, expect_int, expect_number
from .weights_file import WeightsFile, WeightsFileError, save_safetensors

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
# sizes and counts the spec states, each a positive integer; then bounds for every number in a config
_SIZES = {"unet_config": ("in_channels", "out_channels", "model_channels", "context_dim"),
          "text_encoder_config": ("hidden_size", "num_hidden_layers", "num_attention_heads"),
          "vae_config": ("embed_dim",)}
_DDCONFIG_SIZES = ("ch", "z_channels", "num_res_blocks", "in_channels", "out_ch")
MAX_CONFIG_INT = 1 << 20       # token ids and vocabularies (CLIP's: 49,408) included
MAX_LIST = 64                  # levels, blocks, depths per block
LATENT_CHANNELS = 4            # the latent format of both bundle families (SD1.x and the x4 upscaler)
SCALE_FACTOR_RANGE = (1e-4, 1e4)   # a latent scale factor that keeps float32 latents finite both ways
# unet_config keys a spec may state: the spatial architecture of the SD families, as arguments of
# ComfyUI's UNetModel. The others are the host's to choose (device, dtype, operations, attention
# precision) or build what neither family has (class labels, SVD's temporal blocks, a codebook head).
UNET_CONFIG_KEYS = frozenset((
    "image_size", "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "dropout",
    "conv_resample", "use_checkpoint", "num_heads", "num_head_channels", "num_heads_upsample",
    "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "use_spatial_transformer",
    "transformer_depth", "transformer_depth_middle", "transformer_depth_output", "context_dim", "legacy",
    "disable_self_attentions", "num_attention_blocks", "disable_middle_self_attn", "use_linear_in_transformer",
    "adm_in_channels", "use_temporal_resblock", "use_temporal_attention"))
# keys stated only to say a part is absent (as ComfyUI's detected configs do): each must be unset
_UNET_ABSENT = {"adm_in_channels": None, "use_temporal_resblock": False, "use_temporal_attention": False}


class BundleFormatError(WeightsFileError):
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
        _expect(isinstance(self.description, str), "description to be text", type(self.description).__name__)
        _expect(isinstance(self.extra, dict), "extra to be an object", type(self.extra).__name__)
        _require_keys("unet_config", self.unet_config, _REQUIRED_UNET_KEYS)
        _require_keys("vae_config", self.vae_config, _REQUIRED_VAE_KEYS)
        _require_keys("text_encoder_config", self.text_encoder_config, _REQUIRED_TEXT_KEYS)
        self._check_unet_keys()
        _require_keys("vae_config.ddconfig", self.vae_config["ddconfig"], ("z_channels", "ch_mult"))
        self._check_numbers()
        _expect(self.unet_config["context_dim"] == self.text_encoder_config["hidden_size"],
                "unet_config.context_dim equal to text_encoder_config.hidden_size",
                f"{self.unet_config['context_dim']} vs {self.text_encoder_config['hidden_size']}")
        image_channels = 3 if family_named(self.family).concat_image else 0
        _expect(self.unet_config["in_channels"] == self.latent_channels + image_channels,
                f"unet_config.in_channels = {self.latent_channels} latent channels"
                + (" + 3 low-res image channels" if image_channels else ""), str(self.unet_config["in_channels"]))
        _expect(self.latent_channels == LATENT_CHANNELS,
                f"vae_config.ddconfig.z_channels = {LATENT_CHANNELS} (the latent format of the {self.family} family)",
                str(self.latent_channels))
        scale = self.vae_config.get("scale_factor", 1.0)
        low, high = SCALE_FACTOR_RANGE
        _expect(isinstance(scale, (int, float)) and not isinstance(scale, bool) and low <= scale <= high,
                f"vae_config.scale_factor a number from {low:g} to {high:g} (SD's is 0.18215)", repr(scale))

    def _check_unet_keys(self):
        """Only architecture keys (UNET_CONFIG_KEYS), and those that say a part is absent unset: a
        'device' or 'dtype' would overrule the host, a class label would build a model no sampler
        feeds, each failing later with a raw error that does not name the file."""
        unknown = sorted(set(self.unet_config) - UNET_CONFIG_KEYS)
        _expect(not unknown, "unet_config keys from the SD families' UNet architecture", f"{unknown}")
        for key, unset in _UNET_ABSENT.items():
            value = self.unet_config.get(key, unset)
            _expect(value is unset,
                    f"unet_config.{key} = {unset!r} (no {self.family} UNet has one)", repr(value))

    def _check_numbers(self):
        """Sizes are positive integers of sane size, lists short, and every number in the configs
        finite and bounded: a string or negative size would surface as a raw error when building,
        a huge one as an allocation (whether sizes fit the weights is checked against the file)."""
        for config_name, keys in _SIZES.items():
            for key in keys:
                expect_int(f"{config_name}.{key}", getattr(self, config_name)[key], BundleFormatError, maximum=MAX_WIDTH)
        expect_int("text_encoder_config.vocab_size", self.text_encoder_config["vocab_size"], BundleFormatError,
                   maximum=MAX_CONFIG_INT)
        ddconfig = self.vae_config["ddconfig"]
        _expect(isinstance(ddconfig, dict), "vae_config.ddconfig to be an object", type(ddconfig).__name__)
        for key in _DDCONFIG_SIZES:
            if key in ddconfig:
                expect_int(f"vae_config.ddconfig.{key}", ddconfig[key], BundleFormatError, maximum=MAX_WIDTH)
        for where, value in (("vae_config.ddconfig.ch_mult", ddconfig.get("ch_mult")),
                             ("unet_config.channel_mult", self.unet_config["channel_mult"])):
            _expect(isinstance(value, list) and 1 <= len(value) <= 8, f"{where} a list of 1 to 8 multipliers", repr(value)[:40])
            for m in value:
                expect_int(where, m, BundleFormatError, maximum=MAX_LIST)
        for name in ("unet_config", "vae_config", "text_encoder_config"):
            _check_config_numbers(name, getattr(self, name))

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


def _check_config_numbers(where: str, value):
    """Every number in a config (nested objects and lists) finite, integers from -1 (ComfyUI's
    'unset') to MAX_CONFIG_INT, lists at most MAX_LIST long."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_config_numbers(f"{where}.{key}", item)
    elif isinstance(value, list):
        _expect(len(value) <= MAX_LIST, f"{where} a list of at most {MAX_LIST} items", f"{len(value)} items")
        for item in value:
            _check_config_numbers(where, item)
    elif isinstance(value, int) and not isinstance(value, bool):
        expect_int(where, value, BundleFormatError, minimum=-1, maximum=MAX_CONFIG_INT)
    elif isinstance(value, float):
        expect_number(where, value, BundleFormatError)


def _require_keys(name: str, config, keys):
    _expect(isinstance(config, dict), f"{name} to be an object", type(config).__name__)
    missing = [k for k in keys if k not in config]
    _expect(not missing, f"{name} to define {list(keys)}", f"missing {missing}")


def open_bundle(path: str | Path, name: str | None = None) -> tuple[BundleSpec, WeightsFile]:
    """(spec, file by its header) of the bundle at `path`, named `name` (as listed in its models
    folder; default the file name). Only the header is read: cheap, and raised before any weights
    are touched."""
    path = Path(path)
    name = name or path.name
    if path.suffix not in (".safetensors", ".sft"):
        raise BundleFormatError(f"'{name}': expected a .safetensors bundle, found a '{path.suffix}' file.")
    file = WeightsFile(path, name, BundleFormatError)
    if BUNDLE_METADATA_KEY not in file.metadata:
        raise BundleFormatError(
            f"'{name}' has no '{BUNDLE_METADATA_KEY}' metadata, so it is not a Video LDM bundle. "
            "A full-size SD checkpoint loads with core 'Load Checkpoint' instead.")
    return BundleSpec.from_json(file.metadata[BUNDLE_METADATA_KEY], source=file.source), file


TOKEN_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
POSITION_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"


def check_stated_sizes(spec: BundleSpec, shapes: dict, source: str):
    """Sizes the spec states that the host's classes do not build from (ComfyUI's CLIP always makes
    SD's 49,408-token embedding) against the file's shapes: a spec never contradicts its weights
    silently. `shapes`: key -> anything with `.shape` (a header's TensorShape or a tensor)."""
    text = spec.text_encoder_config
    stated = [(TOKEN_EMBEDDING, (text["vocab_size"], text["hidden_size"]), "vocab_size x hidden_size")]
    if "max_position_embeddings" in text:
        stated.append((POSITION_EMBEDDING, (text["max_position_embeddings"], text["hidden_size"]),
                       "max_position_embeddings x hidden_size"))
    for key, expected, what in stated:
        found = tuple(shapes[key].shape) if key in shapes else None
        if found != expected:
            raise BundleFormatError(f"{source}: the spec states {what} = {expected}, but the file's {key} "
                                    f"{'is missing' if found is None else f'has the shape {found}'}. The spec contradicts "
                                    f"its weights; the file is damaged or was edited.")


def holds_bundle(path: str | Path) -> bool:
    """Whether the file at `path` says it is a bundle (a safetensors header with the spec under
    BUNDLE_METADATA_KEY), whatever that spec is: a bundle with a broken spec is still a bundle, to
    be refused as one, not loaded as a checkpoint of a guessed kind."""
    path = Path(path)
    return (path.suffix in (".safetensors", ".sft")
            and BUNDLE_METADATA_KEY in WeightsFile(path, path.name, BundleFormatError).metadata)


def read_bundle_spec(path: str | Path) -> BundleSpec:
    """The spec of the bundle at `path`, from its header."""
    return open_bundle(path)[0]


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
    save_safetensors(path, tensors, {BUNDLE_METADATA_KEY: spec.to_json()})
