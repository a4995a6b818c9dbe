"""The model side of training, for the Train Temporal Adapter node and the CLI alike: the frozen
base UNet of a MODEL, run with a trainable temporal adapter through the same patches that sample
with it (host/temporal_adapter.py), as the `denoiser(x_t, t, num_videos, conditioning)` the core
objectives call; the noise schedule and precision a run trains in; the adapter it starts from.

Nothing of the user's MODEL changes: the UNet is frozen on a copy of its own (`copied_model`, as
core's TrainLoraNode does), and the adapter is a fresh fp32 module outside any cast or offload.
Both run in core's legacy ModelPatcher even where the server enables DynamicVRAM: it loads the
weights whole and keeps them in place from forward to backward, and the parameters the optimizer
holds stay the ones the layers use.
"""

from __future__ import annotations

import copy
import logging

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
from comfy_extras.nodes_model_advanced import ModelSamplingDiscreteDistilled

from ..videoldm_core.temporal_adapter import TemporalAdapter, resolve_slots
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.objective import TrainingError, frozen
from ..videoldm_core.training.schedule import NoiseSchedule
from ..videoldm_core.training.trainer import PRECISIONS
from .context import context_kwargs
from .keys import CHECKPOINT_KEY
from .noise_schedule import discrete_problem, prediction_of
from .temporal_adapter import apply_adapter, fresh_adapter_for_model
from .unet_layout import model_family, spatial_layout

log = logging.getLogger("videoldm")


def noise_schedule(model, spec=None) -> NoiseSchedule:
    """The discrete schedule and parameterisation (ε or v) to train with: the adapter's own when
    `spec` states one (a public module keeps its training schedule), else the MODEL's."""
    sampling = model.get_model_object("model_sampling")
    problem = discrete_problem(sampling)   # as sampling decides it: EDM is a V_PREDICTION, X0 an EPS
    if problem is None and isinstance(sampling, ModelSamplingDiscreteDistilled):
        problem = (f"the model samples with {type(sampling).__name__}, a distilled table of "
                   f"{len(sampling.sigmas)} of its timesteps (LCM), not the schedule it was trained on")
    if problem is not None:
        raise TrainingError(f"the pack trains on a discrete (DDPM) noise schedule with ε or v prediction; {problem}.")
    prediction = "v" if prediction_of(sampling) is comfy.model_sampling.V_PREDICTION else "eps"
    trained = spec.beta_schedule if spec is not None else None
    if trained is not None:
        if trained.lcm_timesteps is not None:
            raise TrainingError(f"the adapter was trained as a latent consistency model ({trained.label}); the pack "
                                "trains diffusion (ε or v) adapters, not consistency distillation.")
        return NoiseSchedule.from_sigmas(trained.sigmas(), prediction)
    return NoiseSchedule.from_sigmas(sampling.sigmas.detach().cpu(), prediction)


def augmentation_schedule(model) -> tuple[NoiseSchedule | None, int]:
    """The SD x4 upscaler's noise augmentation of the low-res frames (schedule, max level)."""
    augmentor = getattr(model.model, "noise_augmentor", None)
    if not isinstance(model.model, comfy.model_base.SD_X4Upscaler) or augmentor is None:
        return None, 0
    return NoiseSchedule(augmentor.alphas_cumprod.detach().cpu()), int(augmentor.max_noise_level)


def trainable_base(model):
    """MODEL's UNet ready to be a frozen part of a graph: ComfyUI loads it frozen already, but a loader
    node ran under inference mode, and inference tensors cannot be saved for backward, so such a
    UNet is copied outside it (as core's TrainLoraNode does); so is one in DynamicVRAM's patcher,
    which streams its weights. The user's MODEL is never changed."""
    if model.is_dynamic() or any(p.is_inference() for p in model.model.diffusion_model.parameters()):
        model = copied_model(model)
    frozen(model.model.diffusion_model)
    return model


def pretrainable_unet(model):
    """A copy of MODEL to pretrain as an image model (the paper's first stage): its UNet in fp32,
    outside inference mode, requiring grad. The user's MODEL is never changed."""
    model = copied_model(model)
    model.model.diffusion_model.float().requires_grad_(True)
    model.model.diffusion_model.dtype, model.model.manual_cast_dtype = torch.float32, None   # what get_dtype() says
    return model


def held_by_dynamic_vram(model) -> bool:
    """Whether DynamicVRAM's patcher has held MODEL's model: it then carries host buffers that are
    freed when their owner goes, which a Python deep copy would free twice (a crash of the server)."""
    return model.is_dynamic() or hasattr(model.model, "dynamic_pins")


def copied_model(model):
    """MODEL with a copy of its model of its own, made outside inference mode, in core's legacy
    ModelPatcher in a fresh state (nothing backed up, nothing pinned), its patches kept.

    One that DynamicVRAM has held is loaded again by the loader that made it (ModelPatcher.clone
    with force_deepcopy, as core's TrainLoraNode and MultiGPU copies do); any other is deep-copied,
    its model config shared, not copied (the config's attribute fallback breaks deepcopy)."""
    with torch.inference_mode(False):
        if held_by_dynamic_vram(model):
            if model.cached_patcher_init is None:
                raise TrainingError(
                    f"training needs a copy of this MODEL ({type(model.model).__name__}) of its own; under DynamicVRAM "
                    "ComfyUI makes one by loading it again, and the node that loaded it gives no way to "
                    "(no cached_patcher_init). Load it with a core loader (Load Checkpoint, Load Diffusion Model) "
                    "or Load Video LDM Bundle, or start ComfyUI with --disable-dynamic-vram.")
            return model.clone(disable_dynamic=True, force_deepcopy=True)
        config = model.model.model_config
        copied = copy.deepcopy(model.model, memo={id(config): config})
    return model.clone(model_override=(copied, ({}, {}, {}, set())))


def training_precision(requested: str, base, quiet: bool = False) -> str:
    """The precision a run over MODEL's frozen UNet computes in (a name of PRECISIONS): `requested`,
    unless that is fp32 over 16-bit weights (ComfyUI's default for SD UNets on most GPUs), which
    cannot compute in fp32 without a full-precision copy of the UNet: then the weights' own, so that
    the trainer's autocast and its grad scaler (fp16) match what the UNet computes in."""
    weights = base.model.get_dtype()
    if requested != "fp32" or weights == torch.float32:
        return requested
    resolved = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(weights)
    if resolved is None:
        raise TrainingError(f"the UNet's weights are {weights}, which training cannot compute in; load the model in "
                            "fp32, bf16 or fp16 (e.g. without --fp8_e4m3fn-unet).")
    if not quiet:
        log.warning("Video LDM: the UNet's weights are %s, so training computes in %s (precision fp32 needs an fp32 "
                    "UNet: ComfyUI started with --fp32-unet).", weights, resolved)
    return resolved


def reads_pooled(model) -> bool:
    """Whether MODEL's UNet is conditioned on a vector of the pooled text too (SDXL's `y`)."""
    return not model_family(model).concat_image and getattr(model.model, "adm_channels", 0) > 0


def check_empty_prompt(model, prompt, empty_prompt, names=("the prompt", "the empty prompt")):
    """The empty prompt (text, pooled) fits the prompt it stands in for on MODEL: the same text
    encoder (features per token, chunks of tokens) and, where the UNet reads it, a pooled vector.
    `names`: what the two are called where they were given (the node's inputs)."""
    (text, _), (empty_text, empty_pooled) = prompt, empty_prompt
    prompt_name, empty_name = names
    if empty_text.ndim != 3 or empty_text.shape[-1] != text.shape[-1]:
        raise TrainingError(f"caption dropout: expected {empty_name} encoded like {prompt_name} ({text.shape[-1]} "
                            f"features per token), found shape {tuple(empty_text.shape)}; encode both with the model's "
                            "own CLIP.")
    if text.shape[1] % empty_text.shape[1]:
        raise TrainingError(f"caption dropout: {prompt_name} is {text.shape[1]} tokens long, not a multiple of "
                            f"{empty_name}'s {empty_text.shape[1]}; encode both with the model's own CLIP.")
    if reads_pooled(model) and empty_pooled is None:
        raise TrainingError(f"caption dropout: this UNet reads a pooled text vector, and {empty_name} has none; "
                            "encode it with the model's own CLIP (CLIP Text Encode).")


class UNetDenoiser:
    """f_θ,φ(x_t; c, t): the frozen UNet with the trainable adapter applied, called directly (no
    sampler), with c_S, interpolation labels, the x4 upscaler's concat and noise level routed
    exactly as in sampling."""

    def __init__(self, base, adapter, text: torch.Tensor, pooled: torch.Tensor | None = None,
                 gradient_checkpointing: bool = False, name: str = "training", precision: str = "fp32",
                 empty_prompt: tuple[torch.Tensor, torch.Tensor | None] | None = None):
        self.base, self.adapter = base, adapter   # adapter None: the UNet alone (image pretraining)
        self.device = mm.get_torch_device()
        if adapter is None:
            self.model = base
        else:
            # Legacy patcher: DynamicVRAM's would replace small layers' parameters with frozen copies
            # when it loads them, out of the optimizer's reach.
            patcher = comfy.model_patcher.ModelPatcher(adapter, load_device=self.device, offload_device=self.device)
            self.model = apply_adapter(base, patcher, name)
        options = {k: v for k, v in self.model.model_options["transformer_options"].items()}
        options["wrappers"] = {}
        comfy.patcher_extension.merge_nested_dicts(options["wrappers"], self.model.wrappers, copy_dict1=False)
        options[CHECKPOINT_KEY] = gradient_checkpointing
        self.transformer_options = options
        self.text, self.pooled = text, pooled
        self.is_upscaler = model_family(base).concat_image
        # (text, pooled) of the empty prompt: what rows marked "text_dropped" are conditioned on
        self.empty_prompt = empty_prompt
        if empty_prompt is not None:
            check_empty_prompt(base, (text, pooled), empty_prompt)
        # the run's precision; autocast casts the frozen weights to it
        self.dtype = PRECISIONS[training_precision(precision, base, quiet=True)] or torch.float32

    def load(self):
        """The UNet on the compute device (the adapter follows as an additional model)."""
        mm.load_models_gpu([self.model], force_full_load=True)
        if self.adapter is not None:
            self.adapter.to(self.device)
        return self

    @property
    def reads_pooled(self) -> bool:
        return reads_pooled(self.base)

    def _adm(self, num_rows: int, height: int, width: int, pooled=None):
        if not self.reads_pooled:
            return None
        pooled = self.pooled if pooled is None else pooled
        y = self.base.model.encode_adm(pooled_output=pooled, width=width * 8, height=height * 8, crop_w=0, crop_h=0,
                                       target_width=width * 8, target_height=height * 8, device=self.device)
        return y.to(self.device).expand(num_rows, -1)

    def _drop_text(self, dropped, text, y, pooled_y: bool, size):
        """Rows marked in `dropped` ((rows,) bool) conditioned on the empty prompt: its text (repeated to
        a longer prompt's length, as core's CFG batches them) and, where `y` is SDXL's vector of the
        pooled text, the empty prompt's."""
        if self.empty_prompt is None:
            raise TrainingError("caption dropout (text_dropout > 0) needs the empty prompt's encoding; the denoiser "
                                "was built without one.")
        empty_text, empty_pooled = self.empty_prompt
        if text.shape[1] % empty_text.shape[1]:
            raise TrainingError(f"caption dropout: the text is {text.shape[1]} tokens long, not a multiple of the empty "
                                f"prompt's {empty_text.shape[1]}.")
        empty_text = empty_text.to(text).repeat(1, text.shape[1] // empty_text.shape[1], 1)
        keep = ~dropped.to(self.device)
        text = torch.where(keep[:, None, None], text, empty_text.expand_as(text))
        if pooled_y and y is not None:   # the empty prompt's pooled vector was checked when the denoiser was built
            y = torch.where(keep[:, None], y, self._adm(y.shape[0], *size, pooled=empty_pooled).to(y))
        return text, y

    def __call__(self, x_t, t, num_videos: int, conditioning: dict) -> torch.Tensor:
        rows = x_t.shape[0]
        x = x_t.to(self.device)
        if "concat" in conditioning:
            x = torch.cat([x, conditioning["concat"].to(x)], dim=1)
        text = conditioning.get("text")
        text = (self.text.expand(rows, -1, -1) if text is None else text).to(self.device)
        y = conditioning.get("y")   # the x4 upscaler's noise level; None: SDXL's vector of the pooled text, or none
        pooled_y = y is None
        y = self._adm(rows, *x_t.shape[-2:]) if pooled_y else y.to(self.device)
        if conditioning.get("text_dropped") is not None:
            text, y = self._drop_text(conditioning["text_dropped"], text, y, pooled_y, x_t.shape[-2:])
        extra = context_kwargs(conditioning.get("c_s"), conditioning.get("labels"), self.device)
        options = {**self.transformer_options, "cond_or_uncond": [0] * num_videos}
        unet = self.base.model.diffusion_model
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = unet(x.to(self.dtype), t.float().to(self.device), context=text.to(self.dtype), y=y,
                       transformer_options=options, **extra)
        return out.float()


def trainable_decoder(vae):
    """A frozen float32 copy of the VAE's image decoder, made outside inference mode: the VAE itself
    keeps its decoder as it was (dtype, mode, requires_grad)."""
    with torch.inference_mode(False):
        decoder = copy.deepcopy(vae.first_stage_model.decoder)
    return frozen(decoder.float())


def trained_state(module, trainer, phase: str = "adapter", attribute: str = "adapter") -> dict[str, torch.Tensor]:
    """The module's full state dict (buffers too) with the trained weights, EMA ones when kept;
    `attribute`: the module's name inside the phase."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    prefix = attribute + "."
    trained = {k[len(prefix):]: v.detach().cpu() for k, v in trainer.phase_state(phase).items() if k.startswith(prefix)}
    if set(trained) - set(state):
        raise TrainingError(f"trained weights {sorted(set(trained) - set(state))[:3]} are not in the {attribute}.")
    state.update(trained)
    return state


def starting_adapter(model, mode, spec=None, weights: dict | None = None, source: str = "adapter",
                     context_frames=None, context_width: int = 64, regimes=(0, 1), **options):
    """(spec, fp32 trainable module) for the node and the CLI alike: a copy of the given adapter
    (`spec` and its `weights`, checked against `model`), or a fresh one for `mode` (`options` go to
    the placement). Prediction and interpolation get a context encoder for S = 0, 1, 2 by default."""
    if spec is not None:
        resolve_slots(spec, spatial_layout(model.model.diffusion_model), model_family(model).name, source=source)
        module = TemporalAdapter(spec)
        module.load_weights({k: v.float() for k, v in weights.items()}, source=source)
        return spec, module
    mode = mode_named(mode)
    if context_frames is None:
        context_frames = mode.default_context_frames
    return fresh_adapter_for_model(model, context_frames=tuple(context_frames), context_width=context_width,
                                   interpolation=mode.has_regimes and list(regimes) != [0], **options)
