"""Load, Apply and Save Temporal Adapter: temporal layers over any SD checkpoint (Video LDM §3.1)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import comfy.utils
import torch
import folder_paths
from comfy_api.latest import io, ui
from typing_extensions import override

from ..videoldm_core.adapter import AdapterFormatError, AdapterSpec, save_adapter
from ..videoldm_core.importers import import_adapter
from .temporal_patch import apply_adapter, build_adapter_patcher

TEMPORAL_ADAPTERS = "temporal_adapters"


@dataclass(frozen=True)
class LoadedAdapter:
    """The TEMPORAL_ADAPTER value: the adapter's own ModelPatcher, its spec and its file name."""

    name: str
    spec: AdapterSpec
    patcher: object


TemporalAdapter = io.Custom("TEMPORAL_ADAPTER")


def read_weights(path: str, name: str) -> tuple[dict, dict]:
    """(state dict, safetensors metadata). Pickle files are read weights-only: code in them is refused."""
    try:
        state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except pickle.UnpicklingError as e:
        raise AdapterFormatError(f"'{name}': refused to load; the pickle holds more than plain weights (only tensors "
                                 f"are read, never code). Convert it to .safetensors from a trusted source. ({e})") from None
    except Exception as e:
        raise AdapterFormatError(f"'{name}': not a readable weights file (corrupt or truncated?): {e}") from None
    if not isinstance(state_dict, dict):
        raise AdapterFormatError(f"'{name}': expected a dictionary of weights, found {type(state_dict).__name__}.")
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    return tensors, metadata or {}


def load_temporal_adapter(path: str, name: str) -> LoadedAdapter:
    state_dict, metadata = read_weights(path, name)
    spec, native = import_adapter(state_dict, metadata, source=f"'{name}'")
    return LoadedAdapter(name, spec, build_adapter_patcher(spec, native, source=f"'{name}'"))


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
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(TEMPORAL_ADAPTERS),
                               tooltip="A file in models/temporal_adapters (or models/animatediff_models)."),
            ],
            outputs=[TemporalAdapter.Output(display_name="TEMPORAL_ADAPTER",
                                            tooltip="The temporal layers, for Apply Temporal Adapter.")],
        )

    @classmethod
    @override
    def execute(cls, adapter_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(TEMPORAL_ADAPTERS, adapter_name)
        return io.NodeOutput(load_temporal_adapter(path, adapter_name))


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
                TemporalAdapter.Input("temporal_adapter", tooltip="From Load Temporal Adapter."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="How much of the temporal layers' change to keep: 0 is exactly the image model, "
                                       "1 the adapter as trained."),
                io.Int.Input("attention_distance", default=0, min=0, max=4096,
                             tooltip="Let temporal attention see at most this many frames away (0: no limit). The paper "
                                     "uses 8 to run a model convolutionally in time, longer than it was trained on."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A copy of MODEL with the temporal layers applied.")],
        )

    @classmethod
    @override
    def execute(cls, model, temporal_adapter, strength, attention_distance) -> io.NodeOutput:
        patched = apply_adapter(model, temporal_adapter.patcher, temporal_adapter.name, strength=strength,
                                max_distance=attention_distance or None)
        return io.NodeOutput(patched)


class SaveTemporalAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VideoLDMSaveTemporalAdapter",
            display_name="Save Temporal Adapter",
            category="Video LDM/adapters",
            description="Saves temporal layers in the pack's native format (safetensors with the adapter spec in its "
                        "metadata) under output/temporal_adapters; imported formats are converted.",
            inputs=[
                TemporalAdapter.Input("temporal_adapter", tooltip="The adapter to save."),
                io.String.Input("filename_prefix", default="temporal_adapters/adapter",
                                tooltip="Path under the output folder; a counter and .safetensors are appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    @override
    def execute(cls, temporal_adapter, filename_prefix) -> io.NodeOutput:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        filename = f"{name}_{counter:05}_.safetensors"
        save_adapter(os.path.join(folder, filename), temporal_adapter.patcher.model, temporal_adapter.spec)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {os.path.join(subfolder, filename)}"))
