"""Load, Apply and Save Temporal Adapter: temporal layers over any SD checkpoint (Video LDM §3.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io, ui
from typing_extensions import override

from ..host.model_folders import TEMPORAL_ADAPTERS, filenames
from ..host.noise_schedule import AUTO, NOISE_SCHEDULE_CHOICES
from ..host.temporal_adapter import apply_adapter, load_listed_adapter, prefix_problem, save_temporal_adapter
from .io_types import TemporalAdapterType, checked_inputs, valid_numbers


class LoadTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMLoadTemporalAdapter",
            display_name="Load Temporal Adapter",
            category="Video LDM/adapters",
            description="Loads temporal layers for an SD image model: a Video LDM adapter, an AnimateDiff or HotshotXL "
                        "motion module, or the temporal layers of an SVD UNet. The format is detected from the file.",
            search_aliases=["motion module", "animatediff", "temporal layers", "video ldm"],
            inputs=[
                io.Combo.Input("adapter_name", options=filenames(TEMPORAL_ADAPTERS),
                               tooltip="A file in models/temporal_adapters (or models/animatediff_models)."),
            ],
            outputs=[TemporalAdapterType.Output(display_name="TEMPORAL_ADAPTER",
                                            tooltip="The temporal layers, for Apply Temporal Adapter.")],
        )

    @classmethod
    @override
    def execute(cls, adapter_name) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(load_listed_adapter(adapter_name))


class ApplyTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMApplyTemporalAdapter",
            display_name="Apply Temporal Adapter",
            category="Video LDM/adapters",
            description="Inserts temporal layers after the frozen spatial layers of MODEL and returns a patched copy; "
                        "the input MODEL is not changed. Frames are the latent batch: sample T frames with a batch of T.",
            inputs=[
                io.Model.Input("model", tooltip="An SD image model of the adapter's family (SD1.x, SD2.x, SDXL ...)."),
                TemporalAdapterType.Input("temporal_adapter", tooltip="From Load Temporal Adapter."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="How much of the temporal layers' change to keep: 0 is exactly the image model, "
                                       "1 the adapter as trained."),
                io.Int.Input("attention_distance", default=0, min=0, max=4096,
                             tooltip="Let temporal attention see at most this many frames away (0: no limit). The paper "
                                     "uses 8 to run a model convolutionally in time, longer than it was trained on.", advanced=True),
                io.Combo.Input("noise_schedule", options=list(NOISE_SCHEDULE_CHOICES), default=AUTO, optional=True,
                               tooltip="The noise schedule of the patched copy. auto: the one the adapter was trained "
                                       "with (AnimateDiff SD1.5 modules: sqrt_linear; the SDXL beta module: linear to "
                                       "0.020; AnimateLCM: LCM; with a ModelSamplingDiscrete 'lcm' placed before this node, LCM on "
                                       "those betas); model: keep MODEL's own; or a schedule by name "
                                       "(betas, beta_start-beta_end). Set on the copy only; a ModelSampling node placed "
                                       "after the last Apply Temporal Adapter replaces it (the log says so when that "
                                       "samples otherwise). Optional, so API prompts saved before it existed still "
                                       "run.", advanced=True),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A copy of MODEL with the temporal layers applied.")],
        )

    @classmethod
    def validate_inputs(cls, strength=None):
        return valid_numbers(cls, strength=strength)   # NaN passes ComfyUI's own min/max check

    @classmethod
    @override
    def execute(cls, model, temporal_adapter, strength, attention_distance, noise_schedule=AUTO) -> io.NodeOutput:
        checked_inputs(cls, locals())
        patched = apply_adapter(model, temporal_adapter.patcher, temporal_adapter.name, strength=strength,
                                attention_distance=attention_distance or None, noise_schedule=noise_schedule)
        return io.NodeOutput(patched)


class SaveTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMSaveTemporalAdapter",
            display_name="Save Temporal Adapter",
            category="Video LDM/adapters",
            description="Saves temporal layers in the pack's native format (safetensors with the adapter spec in its "
                        "metadata) into models/temporal_adapters, where Load Temporal Adapter finds it; imported "
                        "formats are converted.",
            inputs=[
                TemporalAdapterType.Input("temporal_adapter", tooltip="The adapter to save."),
                io.String.Input("filename_prefix", default="my_adapter",
                                tooltip="Name (subfolders allowed) under models/temporal_adapters, where Load Temporal "
                                        "Adapter lists it; a counter and .safetensors are appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    @override
    def validate_inputs(cls, filename_prefix=None) -> bool | str:
        """A prefix that cannot be saved under is refused before the nodes upstream (a training) run."""
        problem = prefix_problem(filename_prefix) if isinstance(filename_prefix, str) else None
        return f"Save Temporal Adapter: {problem}" if problem else True

    @classmethod
    @override
    def execute(cls, temporal_adapter, filename_prefix) -> io.NodeOutput:
        checked_inputs(cls, locals())
        return io.NodeOutput(ui=ui.PreviewText(f"saved {save_temporal_adapter(temporal_adapter, filename_prefix)}"))
