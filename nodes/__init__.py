"""Thin ComfyUI nodes (V3 schema) over videoldm_core; one file per stage."""

from .bundle_loader import LoadBundle
from .temporal_adapter import ApplyTemporalAdapter, LoadTemporalAdapter, SaveTemporalAdapter
from .temporal_vae import LoadTemporalVAE, TemporalVAEDecode

NODES = [
    LoadBundle,
    LoadTemporalAdapter,
    ApplyTemporalAdapter,
    SaveTemporalAdapter,
    LoadTemporalVAE,
    TemporalVAEDecode,
]
