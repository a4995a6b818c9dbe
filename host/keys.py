"""The names the pack uses inside ComfyUI's dictionaries: transformer_options entries, model conds
(also the UNet keyword arguments they become) and wrapper/callback keys. One place, so a producer
and its consumer cannot drift apart."""

OPTIONS_KEY = "videoldm_adapters"      # transformer_options: the AppliedAdapter list of a patched model
WRAPPER_KEY = "videoldm_temporal_adapters"  # key of the pack's wrappers and callbacks
CONTEXT_KEY = "videoldm_context"       # model cond and UNet kwarg with c_S; transformer_options entry per call
LABELS_KEY = "videoldm_interpolation"  # model cond with per-frame (regime, augmentation level) rows
CHECKPOINT_KEY = "videoldm_gradient_checkpointing"  # transformer_options flag set by training
