"""The Train Temporal Adapter node's small in-graph run (`train_temporal_adapter`): the checks its
inputs get before anything is built, the frames or folder it trains on, where it saves. The model
side, shared with the CLI, is host/training_model.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..videoldm_core.families import FAMILIES, FAMILY_NAMES
from ..videoldm_core.interpolation import REGIMES
from ..videoldm_core.temporal_adapter import save_adapter
from ..videoldm_core.training.batches import StepBatches
from ..videoldm_core.training.data import ClipSpec, VideoFolder
from ..videoldm_core.training.diffusion_objective import DiffusionPhase, check_mode
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.loss_curve import loss_curve_image
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.run_config import clip_frames_problem
from ..videoldm_core.training.trainer import Trainer, TrainConfig
from .confined_paths import file_inside, name_problem, training_folder, training_roots, writing
from .model_folders import TEMPORAL_ADAPTERS
from .temporal_adapter import SAVED_SUFFIX, LoadedAdapter, build_adapter_patcher, without_adapters
from .training_data import check_training_frames, folder_items, training_items
from .training_model import (UNetDenoiser, augmentation_schedule, check_empty_prompt, noise_schedule, starting_adapter,
                             trainable_base, trained_state, training_precision)
from .unet_layout import model_family

log = logging.getLogger("videoldm")


def save_name_problem(save_name: str) -> str | None:
    """Why `save_name` cannot name the trained adapter's file, or None (validation: nothing made)."""
    root, stem = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0], save_name.removesuffix(".safetensors")
    problem = name_problem(root, stem, f"models/{TEMPORAL_ADAPTERS}", SAVED_SUFFIX)   # its longest form, with a counter
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
        with writing(os.path.basename(saved), f"models/{TEMPORAL_ADAPTERS}", "save_name" if save_name else "the interrupted run"):
            save_adapter(saved, trained, spec)
        log.info("Video LDM: Train Temporal Adapter saved %s", os.path.basename(saved))
    if interrupted is not None:
        raise interrupted
    mm.throw_exception_if_processing_interrupted()
    name = f"trained ({mode}, {step} steps)"
    result = LoadedAdapter(name, spec, build_adapter_patcher(spec, trained, source=name))
    curve = loss_curve_image([r["adapter/loss"] for r in history], title=f"{mode} loss")
    return result, curve
