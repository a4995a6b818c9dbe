"""The names the pack uses inside ComfyUI's objects: transformer_options entries, model conds (also
the UNet keyword arguments they become), wrapper/callback and additional-model keys, and the
attributes it sets on objects it creates. One place, so a producer and its consumer cannot drift
apart."""

OPTIONS_KEY = "videoldm_adapters"      # transformer_options: the AppliedAdapter list of a patched model
WRAPPER_KEY = "videoldm_temporal_adapters"  # key of the pack's wrappers and callbacks
CONTEXT_KEY = "videoldm_context"       # model cond and UNet kwarg with c_S; transformer_options entry per call
LABELS_KEY = "videoldm_interpolation"  # model cond with per-frame (regime, augmentation level) rows
CHECKPOINT_KEY = "videoldm_gradient_checkpointing"  # transformer_options flag set by training
SCHEDULE_KEY = "videoldm_noise_schedule"  # transformer_options: the ScheduleChoice of a patched model
REPLACED_SAMPLING_KEY = "videoldm_replaced_model_sampling"  # transformer_options: the model_sampling patch the schedule replaced
CLIP_NORMS_KEY = "videoldm_clip_norms"  # key of the DIFFUSION_MODEL wrapper that runs the output norm over the clip
TILING_KEY = "videoldm_tiling"         # key of Video Upscale's CALC_COND_BATCH wrapper (tiles and chunks)
ADDITIONAL_MODELS_KEY = "videoldm"     # ModelPatcher additional models: the applied adapters' patchers
SCHEDULE_ATTR = "videoldm_schedule"    # attribute of a model_sampling object the pack made: its BetaSchedule
TEMPORAL_DECODER_ATTR = "videoldm_temporal_decoder"  # attribute of VAE objects the pack creates: their temporal decoder
CHECKS_ITS_SAMPLE_KEY = "videoldm_checks_its_sample"  # transformer_options: a pack sampler that checks its sampled
                                                     # latent itself, naming its node (the adapter's wrapper leaves it)
