"""Train Temporal Adapter: small training runs inside ComfyUI (Video LDM §3: the image model stays
frozen, only the temporal layers learn). Real runs use the CLI (train.py, torchrun)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io
from typing_extensions import override

from ..host.confined_paths import TRAINING_FOLDERS_VARIABLE, training_folder
from ..host.training import save_name_problem, train_temporal_adapter
from ..host.training_data import folder_fingerprint
from ..videoldm_core.errors import VideoLDMError
from ..videoldm_core.training.modes import MODE_NAMES, TEMPORAL
from ..videoldm_core.training.run_config import MAX_SEED, clip_frames_problem
from .io_types import TemporalAdapterType, checked_inputs, valid_numbers


class TrainTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMTrainTemporalAdapter",
            display_name="Train Temporal Adapter",
            category="Video LDM/training",
            description="Trains temporal layers on a frozen image model (Video LDM: only the temporal layers learn), "
                        "for small runs: one video's frames or a folder of clips, a few hundred steps. The MODEL and VAE "
                        "are not changed. Cancel stops the step it lands in and keeps what the finished steps learned.",
            inputs=[
                io.Model.Input("model", tooltip="The frozen image model (SD1.x, SD2.x, SDXL, or the SD x4 upscaler for "
                                                "mode 'upscaler'). A temporal adapter applied to it is ignored, and so is "
                                                "the noise schedule it chose; LoRA and other patches stay."),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the training frames once."),
                io.Conditioning.Input("positive", tooltip="The prompt describing the training clips (every clip "
                                                          "uses it, except those empty_prompt takes); an empty prompt "
                                                          "works."),
                io.Combo.Input("mode", options=list(MODE_NAMES), default=TEMPORAL.name,
                               tooltip="temporal: the base video model. prediction: with 0/1/2 context frames (for "
                                       "Extend Video). interpolation: keyframes every 4th frame given (for Interpolate "
                                       "Keyframes, regime T-to-4T: the clips' own rate; 4T-to-16T needs clips at 4x the "
                                       "rate, which train.py reads with data.fps). upscaler: the SD x4 upscaler's "
                                       "temporal layers on square crops of the frames (the CLI trains smaller "
                                       "patches with adapter.patch)."),
                io.Int.Input("clip_frames", default=8, min=2, max=256,
                             tooltip="T: frames per training clip (interpolation needs 4K−3, e.g. 9 or 13)."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimiser steps."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, round=1e-7,
                               tooltip="AdamW learning rate (the paper uses 1e-4), reached after a short warm-up."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Clips per step.", advanced=True),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=io.ControlAfterGenerate.fixed,
                             tooltip="Seeds clip order, noise and masks: the same seed repeats the run exactly (kept "
                                     "after each run: queueing again for a change downstream does not train again)."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute activations in the backward pass: less memory, more time per step (1.7x in the pack's small benchmark, bench_training).", advanced=True),
                io.Image.Input("images", optional=True,
                               tooltip="One video's frames to train on (every window of clip_frames frames is a clip)."),
                io.String.Input("folder", default="", optional=True,
                                tooltip="Or a folder of videos / frame folders inside ComfyUI's input folder (e.g. "
                                        "'my_clips' for input/my_clips; absolute paths only inside folders the server's "
                                        f"operator lists in {TRAINING_FOLDERS_VARIABLE}); clips are read at `fps` and "
                                        "cropped to width x height."),
                io.Int.Input("width", default=256, min=32, max=4096, step=8, optional=True,
                             tooltip="Clip width in pixels when reading a folder."),
                io.Int.Input("height", default=256, min=32, max=4096, step=8, optional=True,
                             tooltip="Clip height in pixels when reading a folder."),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.001, optional=True,
                               tooltip="Frame rate clips are sampled at from a folder (0: each video's own)."),
                TemporalAdapterType.Input("temporal_adapter", optional=True,
                                      tooltip="Continue training this adapter (a copy; the input is not changed). "
                                              "Without it, a fresh adapter for the mode is created."),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="If set, save the result as models/temporal_adapters/<save_name>.safetensors "
                                        "(Load Temporal Adapter lists it); if that file exists it is kept and the "
                                        "result gets a counter (<save_name>_00001_). Empty: not saved."),
                io.Conditioning.Input("empty_prompt", optional=True,
                                      tooltip="The empty prompt, encoded (CLIP Text Encode of ''). Connected, a share "
                                              "of the clips (text_dropout) trains on it instead of positive, as the "
                                              "training CLI does: the temporal layers then learn the unconditional "
                                              "branch classifier-free guidance (cfg > 1) runs them in. Not connected: "
                                              "every clip trains on positive."),
                io.Float.Input("text_dropout", default=0.1, min=0.0, max=1.0, step=0.01, optional=True, advanced=True,
                               tooltip="Share of the clips trained on empty_prompt (caption dropout; 0.1 as AnimateDiff "
                                       "and the training CLI). Used only when empty_prompt is connected."),
            ],
            outputs=[TemporalAdapterType.Output(display_name="TEMPORAL_ADAPTER", tooltip="The trained temporal layers."),
                     io.Image.Output(display_name="loss_curve", tooltip="The training loss per step.")],
        )

    @classmethod
    def validate_inputs(cls, learning_rate=None, fps=0.0, folder="", mode=None, clip_frames=None,
                        text_dropout=0.1, save_name="") -> bool | str:
        """Numbers finite and in range; clips the mode can learn from (the context frames of a prediction
        adapter are checked when it runs: a linked adapter is not known here); a folder only inside the
        input folder (or the operator's)."""
        problem = valid_numbers(cls, learning_rate=learning_rate, fps=fps, clip_frames=clip_frames,
                                text_dropout=text_dropout)
        if problem is not True:
            return problem
        if mode is not None and mode not in MODE_NAMES:   # named here, so core does not check its options
            return f"mode: expected one of {list(MODE_NAMES)}, found {mode!r}."
        if mode is not None and clip_frames is not None:
            problem = clip_frames_problem(mode, clip_frames, None, "clip_frames")
            if problem:
                return f"Train Temporal Adapter: {problem}."
        if isinstance(save_name, str) and save_name:
            problem = save_name_problem(save_name)
            if problem:
                return f"Train Temporal Adapter: {problem}"
        if not folder:
            return True
        try:
            training_folder(folder)
        except VideoLDMError as e:
            return str(e)
        return True

    @classmethod
    @override
    def fingerprint_inputs(cls, folder="", **kwargs):
        """A folder's clips as they are now (names, sizes, modification times, captions): clips added,
        replaced or re-captioned since the last run train again, instead of ComfyUI handing back the
        adapter it cached for the same inputs."""
        return folder_fingerprint(folder) if folder else ""

    @classmethod
    @override
    def execute(cls, model, vae, positive, mode, clip_frames, steps, learning_rate, batch_size, seed,
                gradient_checkpointing, images=None, folder="", width=256, height=256, fps=0.0,
                temporal_adapter=None, save_name="", empty_prompt=None, text_dropout=0.1) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(*train_temporal_adapter(model, vae, positive, mode, clip_frames, steps, learning_rate,
                                                     batch_size, seed, gradient_checkpointing, images, folder, width,
                                                     height, fps, temporal_adapter, save_name, empty_prompt,
                                                     text_dropout))
