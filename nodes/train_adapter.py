"""Train Temporal Adapter: small training runs inside ComfyUI (Video LDM §3: the image model stays
frozen, only the temporal layers learn). Real runs use the CLI (train.py, torchrun)."""

from __future__ import annotations

import hashlib
import os
import time

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..videoldm_core.adapter import fresh_adapter, resolve_slots, save_adapter
from ..videoldm_core.training.batches import StepBatches
from ..videoldm_core.training.data import ClipSpec, VideoFolder
from ..videoldm_core.training.diffusion_objective import MODES, DiffusionPhase, check_mode
from ..videoldm_core.training.loss_curve import loss_curve_image
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.trainer import Trainer, TrainConfig
from .temporal_adapter import TEMPORAL_ADAPTERS, LoadedAdapter, TemporalAdapter
from .temporal_patch import build_adapter_patcher, fresh_adapter_for_model
from .training_host import (UNetDenoiser, augmentation_schedule, folder_items, noise_schedule, trainable_base,
                            trained_state, training_items)
from .unet_layout import model_family, spatial_layout


def starting_adapter(model, temporal_adapter, mode: str):
    """(spec, fp32 trainable module): a copy of the given adapter, or a fresh one for `mode`."""
    if temporal_adapter is None:
        context = (0, 1, 2) if mode in ("prediction", "interpolation") else ()
        return fresh_adapter_for_model(model, context_frames=context, interpolation=mode == "interpolation")
    spec = temporal_adapter.spec
    resolve_slots(spec, spatial_layout(model.model.diffusion_model), model_family(model), source=f"'{temporal_adapter.name}'")
    module = fresh_adapter(spec)
    module.load_state_dict({k: v.float() for k, v in temporal_adapter.patcher.model.state_dict().items()})
    return spec, module


def input_folder(folder: str) -> str:
    path = folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)
    if not os.path.isdir(path):
        raise TrainingError(f"expected a folder of videos or frame folders, found no folder '{folder}' "
                            f"(relative paths are under ComfyUI's input folder).")
    return path


class TrainTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMTrainTemporalAdapter",
            display_name="Train Temporal Adapter",
            category="Video LDM/training",
            description="Trains temporal layers on a frozen image model (Video LDM: only the temporal layers learn), "
                        "for small runs: one video's frames or a folder of clips, a few hundred steps. The MODEL and VAE "
                        "are not changed. Interrupting stops after the current step and keeps what was learned.",
            inputs=[
                io.Model.Input("model", tooltip="The frozen image model (SD1.x, SD2.x, SDXL, or the SD x4 upscaler for "
                                                "mode 'upscaler'). Any temporal adapter applied to it is ignored."),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the training frames once."),
                io.Conditioning.Input("positive", tooltip="The prompt describing the training clips (every clip "
                                                          "uses it); an empty prompt works."),
                io.Combo.Input("mode", options=list(MODES), default="temporal",
                               tooltip="temporal: the base video model. prediction: with 0/1/2 context frames (for "
                                       "Extend Video). interpolation: keyframes every 4th frame given (for Interpolate "
                                       "Keyframes). upscaler: the SD x4 upscaler's temporal layers on patches."),
                io.Int.Input("clip_frames", default=8, min=2, max=256,
                             tooltip="T: frames per training clip (interpolation needs 4K−3, e.g. 9 or 13)."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimiser steps."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate (the paper uses 1e-4), reached after a short warm-up."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Clips per step."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1,
                             tooltip="Seeds clip order, noise and masks: the same seed repeats the run exactly."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute activations in the backward pass: less memory, about a third slower."),
                io.Image.Input("images", optional=True,
                               tooltip="One video's frames to train on (every window of clip_frames frames is a clip)."),
                io.String.Input("folder", default="", optional=True,
                                tooltip="Or a folder of videos / frame folders (under ComfyUI's input folder, or an "
                                        "absolute path); clips are read at `fps` and cropped to width x height."),
                io.Int.Input("width", default=256, min=32, max=4096, step=8, optional=True,
                             tooltip="Clip width in pixels when reading a folder."),
                io.Int.Input("height", default=256, min=32, max=4096, step=8, optional=True,
                             tooltip="Clip height in pixels when reading a folder."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.125, optional=True,
                               tooltip="Frame rate clips are sampled at from a folder (0: each video's own)."),
                TemporalAdapter.Input("temporal_adapter", optional=True,
                                      tooltip="Continue training this adapter (a copy; the input is not changed). "
                                              "Without it, a fresh adapter for the mode is created."),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="If set, save the result as models/temporal_adapters/<save_name>.safetensors "
                                        "(Load Temporal Adapter lists it). Empty: not saved."),
            ],
            outputs=[TemporalAdapter.Output(display_name="TEMPORAL_ADAPTER", tooltip="The trained temporal layers."),
                     io.Image.Output(display_name="loss_curve", tooltip="The training loss per step.")],
        )

    @classmethod
    @override
    def execute(cls, model, vae, positive, mode, clip_frames, steps, learning_rate, batch_size, seed,
                gradient_checkpointing, images=None, folder="", width=256, height=256, fps=0.0,
                temporal_adapter=None, save_name="") -> io.NodeOutput:
        if (images is None) == (not folder):
            raise TrainingError("expected training frames from exactly one source: `images` or `folder`, found "
                                f"{'both' if images is not None else 'neither'}.")
        config = TrainConfig(steps=steps, lr=learning_rate, warmup=min(50, steps // 10), seed=seed)
        save_path = cls.save_path(save_name) if save_name else None   # a bad name fails before training
        # ComfyUI runs nodes under inference mode; everything autograd sees is made outside it
        with torch.inference_mode(False):
            torch.manual_seed(seed)   # a fresh adapter's initial weights: the same seed repeats the run
            spec, adapter = starting_adapter(model, temporal_adapter, mode)
            check_mode(spec, mode)   # before anything is encoded
            base = trainable_base(model)
            schedule = noise_schedule(base)
            augment, max_level = augmentation_schedule(base)
            text = positive[0][0].clone()
            pooled = positive[0][1].get("pooled_output")
            if images is not None:
                items = training_items(base, vae, images.clone(), clip_frames, mode)
            else:
                dataset = VideoFolder(input_folder(folder), ClipSpec(clip_frames, fps or None, height, width), seed=seed)
                cache = os.path.join(folder_paths.get_temp_directory(), "videoldm_latents",
                                     hashlib.sha256(str(dataset.folder.resolve()).encode()).hexdigest()[:16])
                items = folder_items(base, vae, dataset, mode, cache)
            denoiser = UNetDenoiser(base, adapter, text, None if pooled is None else pooled.clone(),
                                    gradient_checkpointing=gradient_checkpointing).load()
            phase = DiffusionPhase(adapter, denoiser, schedule, mode, augment_schedule=augment, max_noise_level=max_level)
            trainer = Trainer([phase], config, StepBatches(items, batch_size, seed=seed), device=denoiser.device)
            pbar = comfy.utils.ProgressBar(steps)
            finished = trainer.run(should_stop=mm.processing_interrupted, on_step=lambda row: pbar.update(1))
        trained = trained_state(adapter, trainer)
        if save_path or not finished:
            save_adapter(save_path or cls.save_path(f"interrupted_{time.strftime('%Y%m%d-%H%M%S')}"), adapter, spec)
        mm.throw_exception_if_processing_interrupted()
        name = f"trained ({mode}, {trainer.step} steps)"
        result = LoadedAdapter(name, spec, build_adapter_patcher(spec, trained, source=name))
        curve = loss_curve_image([r["adapter/loss"] for r in trainer.history], title=f"{mode} loss")
        return io.NodeOutput(result, curve)

    @staticmethod
    def save_path(save_name: str) -> str:
        folder = folder_paths.get_folder_paths(TEMPORAL_ADAPTERS)[0]
        path = os.path.abspath(os.path.join(folder, save_name if save_name.endswith(".safetensors") else save_name + ".safetensors"))
        if os.path.commonpath([path, os.path.abspath(folder)]) != os.path.abspath(folder):
            raise TrainingError(f"expected a save name inside models/{TEMPORAL_ADAPTERS}, found {save_name!r}.")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path
