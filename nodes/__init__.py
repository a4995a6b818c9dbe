"""Thin ComfyUI nodes (V3 schemas) over the host layer (host/); one file per stage, named as the
stage's host module and core module are."""

from .bundle import LoadBundle
from .context import VideoContextNode
from .guidance import ContextGuiderNode
from .interpolation import InterpolateKeyframes
from .moving_shapes import MovingShapes
from .rollout import ExtendVideo
from .temporal_adapter import ApplyTemporalAdapter, LoadTemporalAdapter, SaveTemporalAdapter
from .temporal_decoder import LoadTemporalVAE, TemporalVAEDecode, TemporalVAEDecodeToVideo
from .training import TrainTemporalAdapter
from .video_upscale import VideoUpscale

NODES = [
    LoadBundle,
    LoadTemporalAdapter,
    ApplyTemporalAdapter,
    SaveTemporalAdapter,
    LoadTemporalVAE,
    TemporalVAEDecode,
    TemporalVAEDecodeToVideo,
    VideoContextNode,
    ContextGuiderNode,
    ExtendVideo,
    InterpolateKeyframes,
    VideoUpscale,
    TrainTemporalAdapter,
    MovingShapes,
]
