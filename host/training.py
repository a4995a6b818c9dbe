"""ComfyUI's side of training: the frozen base UNet of a MODEL, run with a trainable temporal
adapter through the same patches that sample with it (host/temporal_adapter.py), as the
`denoiser(x_t, t, num_videos, conditioning)` the core objectives call; and the Train Temporal
Adapter node's small in-graph run (`train_temporal_adapter`).

Nothing of the user's MODEL changes: the UNet is frozen on a copy of its own (`copied_model`, as
core's TrainLoraNode does), and the adapter is a fresh fp32 module outside any cast or offload.
Both run in core's legacy ModelPatcher even where the server enables DynamicVRAM: it loads the
weights whole and keeps them in place from forward to backward, and the parameters the optimizer
holds stay the ones the layers use.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.utils
import folder_paths
from comfy_extras.nodes_model_advanced import ModelSamplingDiscreteDistilled

from ..videoldm_core.families import FAMILIES, FAMILY_NAMES
from ..videoldm_core.interpolation import REGIMES
from ..videoldm_core.temporal_adapter import TemporalAdapter, resolve_slots, save_adapter
from ..videoldm_core.training.batches import StepBatches
from ..videoldm_core.training.data import ClipSpec, VideoFolder
from ..videoldm_core.training.diffusion_objective import DiffusionPhase, check_mode
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.loss_curve import loss_curve_image
from ..videoldm_core.training.objective import TrainingError, frozen
from ..videoldm_core.training.schedule import NoiseSchedule
from ..videoldm_core.training.run_config import clip_frames_problem
from ..videoldm_core.training.trainer import PRECISIONS, Trainer, TrainConfig
from .confined_paths import file_inside, name_problem, training_folder, training_roots, writing
from .context import context_kwargs
from .keys import CHECKPOINT_KEY
from .model_folders import TEMPORAL_ADAPTERS
from .noise_schedule import discrete_problem, prediction_of
from .temporal_adapter import (LoadedAdapter, apply_adapter, build_adapter_patcher, fresh_adapter_for_model,
                               without_adapters)
from .training_data import check_training_frames, folder_items, training_items
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


def save_name_problem(save_name: str) -> str | None:
    """Why `save_name` cannot name the trained adapter's file, or None (validation: nothing made)."""
    root, stem = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0], save_name.removesuffix(".safetensors")
    problem = name_problem(root, f"{stem}_00001_.safetensors", f"models/{TEMPORAL_ADAPTERS}")   # its longest form
    return problem and f"save_name: {problem}"


def adapter_save_path(save_name: str) -> str:
    """Where `save_name` is saved: inside models/temporal_adapters by its real path. A name already
    taken (a downloaded motion module, an earlier run) is kept: the new file gets core's counter,
    <save_name>_00001_.safetensors, as Save Temporal Adapter's files do."""
    problem = save_name_problem(save_name)
    if problem is not None:
        raise TrainingError(problem)
    root, stem = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0], save_name.removesuffix(".safetensors")
    path = file_inside(root, stem + ".safetensors", f"models/{TEMPORAL_ADAPTERS}")
    if not os.path.lexists(path):
        return path
    _, name, counter, subfolder, _ = folder_paths.get_save_image_path(stem, root)
    return file_inside(root, os.path.join(subfolder, f"{name}_{counter:05}_.safetensors"), f"models/{TEMPORAL_ADAPTERS}")


# The node's clips come at one frame rate, the keyframes' x4: the T-to-4T regime (4T-to-16T needs clips
# at 4x the rate, which the CLI reads with data.fps); drawn at random, the label would mean nothing.
NODE_REGIMES = (REGIMES["T-to-4T"],)
NODE_PROMPTS = ("positive", "empty_prompt")   # the node's inputs, as its refusals name them


def check_model_for_mode(model, mode: str):
    """Mode 'upscaler' trains the SD x4 upscaler, every other mode an SD image model: told from MODEL."""
    family, upscaler = model_family(model), mode_named(mode).is_upscaler
    if family not in FAMILIES:
        raise TrainingError(f"Train Temporal Adapter: expected an SD-family MODEL ({', '.join(FAMILY_NAMES)}), "
                            f"found {family.name}: temporal layers go after the spatial layers of an SD UNet.")
    if upscaler != family.concat_image:
        expected = "the SD x4 upscaler" if upscaler else "an image model (SD1.x, SD2.x, SDXL; the x4 upscaler trains in mode 'upscaler')"
        raise TrainingError(f"Train Temporal Adapter: mode '{mode}' trains {expected}, found a {family.name} MODEL.")


def check_clip_frames(mode: str, clip_frames: int, context_frames):
    problem = clip_frames_problem(mode, clip_frames, context_frames, "clip_frames")
    if problem:
        raise TrainingError(f"Train Temporal Adapter: {problem}.")


def prompt_parts(conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(text, pooled vector or None) of a CONDITIONING's first entry."""
    text, extra = conditioning[0]
    return text, extra.get("pooled_output")


def encoded_prompt(conditioning) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`prompt_parts`, copied (outside inference mode, tensors autograd may see)."""
    text, pooled = prompt_parts(conditioning)
    return text.clone(), None if pooled is None else pooled.clone()


def train_temporal_adapter(model, vae, positive, mode: str, clip_frames: int, steps: int, learning_rate: float,
                           batch_size: int, seed: int, gradient_checkpointing: bool, images=None, folder: str = "",
                           width: int = 256, height: int = 256, fps: float = 0.0, temporal_adapter=None,
                           save_name: str = "", empty_prompt=None,
                           text_dropout: float = 0.1) -> tuple[LoadedAdapter, torch.Tensor]:
    """Train Temporal Adapter: (the trained TEMPORAL_ADAPTER, the loss curve IMAGE). What is saved
    (save_name, or an interrupted run) and what is returned are the same weights: EMA when kept.
    With `empty_prompt`, `text_dropout` of the clips train on it (caption dropout)."""
    if (images is None) == (not folder):
        raise TrainingError("expected training frames from exactly one source: `images` or `folder`, found "
                            f"{'both' if images is not None else 'neither'}.")
    model = without_adapters(model)   # adapters applied to MODEL play no part: neither layers nor schedule
    # what MODEL and the frames alone decide, before an adapter is built or the UNet copied
    check_model_for_mode(model, mode)
    if empty_prompt is not None:
        check_empty_prompt(model, prompt_parts(positive), prompt_parts(empty_prompt), NODE_PROMPTS)
    if images is not None:
        check_training_frames(images, clip_frames, mode)
    config = TrainConfig(steps=steps, lr=learning_rate, warmup=min(50, steps // 10), seed=seed)
    config = dataclasses.replace(config, precision=training_precision(config.precision, model))
    given_spec = None if temporal_adapter is None else temporal_adapter.spec
    noise_schedule(model, given_spec)   # refused here; the copy's is taken below
    if given_spec is not None:
        check_mode(given_spec, mode, NODE_REGIMES)
    check_clip_frames(mode, clip_frames, mode_named(mode).default_context_frames if given_spec is None
                      else given_spec.context_frames)
    save_path = adapter_save_path(save_name) if save_name else None   # a bad name fails before training
    dataset = None if images is not None else VideoFolder(   # every clip probed before anything is built
        training_folder(folder), ClipSpec(clip_frames, fps or None, height, width), seed=seed,
        roots=training_roots(), label=folder)
    # ComfyUI runs nodes under inference mode; everything autograd sees is made outside it
    with torch.inference_mode(False):
        torch.manual_seed(seed)   # a fresh adapter's initial weights: the same seed repeats the run
        given = {} if temporal_adapter is None else dict(spec=temporal_adapter.spec, source=f"'{temporal_adapter.name}'",
                                                         weights=temporal_adapter.patcher.model.state_dict())
        spec, adapter = starting_adapter(model, mode, **given)
        base = trainable_base(model)
        schedule = noise_schedule(base, spec)
        augment, max_level = augmentation_schedule(base)
        # built (and the empty prompt checked against the prompt) before the frames are encoded
        denoiser = UNetDenoiser(base, adapter, *encoded_prompt(positive), gradient_checkpointing=gradient_checkpointing,
                                precision=config.precision,
                                empty_prompt=None if empty_prompt is None else encoded_prompt(empty_prompt))
        if dataset is None:
            items = training_items(base, vae, images.clone(), clip_frames, mode)
        else:
            cache = os.path.join(folder_paths.get_temp_directory(), "videoldm_latents",
                                 hashlib.sha256(str(dataset.folder.resolve()).encode()).hexdigest()[:16])
            items = folder_items(base, vae, dataset, mode, cache)
        denoiser.load()
        phase = DiffusionPhase(adapter, denoiser, schedule, mode, augment_schedule=augment, max_noise_level=max_level,
                               regimes=NODE_REGIMES, text_dropout=0.0 if empty_prompt is None else text_dropout)
        trainer = Trainer([phase], config, StepBatches(items, batch_size, seed=seed), device=denoiser.device)
        pbar = comfy.utils.ProgressBar(steps)
        interrupted = None
        try:
            finished = trainer.run(should_stop=mm.processing_interrupted, on_step=lambda row: pbar.update(1))
        except mm.InterruptProcessingException as e:
            # a Cancel almost always lands inside a step: core's layers raise it in a forward (that step
            # never reaches the optimiser), the server's progress hook after a step (which is kept)
            finished, interrupted = False, e
    trained = trained_state(adapter, trainer)
    history, step = trainer.history, trainer.step
    skipped = int(sum(row.get("adapter/skipped", 0.0) for row in history))
    if skipped:
        log.warning("Video LDM: Train Temporal Adapter: fp16's grad scaler skipped %d of %d steps (their scaled "
                    "gradients overflowed, and it lowered its loss scale); the adapter learned from the other %d.",
                    skipped, len(history), len(history) - skipped)
    # the optimiser's state, the gradients and the UNet copy go before the result is built beside `trained`
    adapter.zero_grad(set_to_none=True)
    del trainer, phase, denoiser, base, items
    if save_path or not finished:
        # the weights returned below (EMA when kept), not the live module's; the name chosen now, as
        # another run may have taken the one checked before training
        saved = adapter_save_path(save_name or f"interrupted_{time.strftime('%Y%m%d-%H%M%S')}")
        with writing(os.path.basename(saved), f"models/{TEMPORAL_ADAPTERS}", "save_name"):
            save_adapter(saved, trained, spec)
        log.info("Video LDM: Train Temporal Adapter saved %s", os.path.basename(saved))
    if interrupted is not None:
        raise interrupted
    mm.throw_exception_if_processing_interrupted()
    name = f"trained ({mode}, {step} steps)"
    result = LoadedAdapter(name, spec, build_adapter_patcher(spec, trained, source=name))
    curve = loss_curve_image([r["adapter/loss"] for r in history], title=f"{mode} loss")
    return result, curve
