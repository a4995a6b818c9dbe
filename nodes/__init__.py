"""Thin ComfyUI nodes (V3 schema) over videoldm_core; one file per stage."""

from .bundle_loader import LoadBundle
from .context_guider import ContextGuiderNode
from .extend_video import ExtendVideo
from .interpolate_keyframes import InterpolateKeyframes
from .temporal_adapter import ApplyTemporalAdapter, LoadTemporalAdapter, SaveTemporalAdapter
from .moving_shapes import MovingShapes
from .train_adapter import TrainTemporalAdapter
from .temporal_vae import LoadTemporalVAE, TemporalVAEDecode
from .video_context import VideoContextNode
from .video_upscale import VideoUpscale

NODES = [
    LoadBundle,
    LoadTemporalAdapter,
    ApplyTemporalAdapter,
    SaveTemporalAdapter,
    LoadTemporalVAE,
    TemporalVAEDecode,
    VideoContextNode,
    ContextGuiderNode,
    ExtendVideo,
    InterpolateKeyframes,
    VideoUpscale,
    TrainTemporalAdapter,
    MovingShapes,
]
