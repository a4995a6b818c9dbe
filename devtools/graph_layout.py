"""How each example graph is laid out in the editor: left to right in the cascade's order, one
group per stage with a title and a one-line note (a Note node at the group's top), nodes stacked
in their group, groups wrapped into rows. devtools.export_ui_workflows applies it to the graph the
frontend's own converter makes from the API twin, so positions are all that changes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    title: str
    note: str
    nodes: tuple[str, ...]       # API node ids, top to bottom, column after column
    columns: tuple[int, ...] = ()   # how many nodes each column holds (default: one column)


MODELS = "Models"
PROMPT = Stage("Prompt", "What the video shows; the negative prompt is empty.", ("2", "3"))
SAVE = "Save"

STAGES: dict[str, tuple[tuple[Stage, ...], int]] = {   # name -> (stages, groups per row)
    "cascade": ((
        Stage(MODELS, "The toy family the pack ships: keyframe model (its VAE is 4x: 64 px frames), prediction and "
                      "interpolation adapters.",
              ("1", "6", "7", "9", "10"), (2, 3)),
        PROMPT,
        Stage("Keyframes", "The image model draws the first; Extend Video predicts the rest from the last 2.",
              ("4", "5", "8"), (2, 1)),
        Stage("Interpolation", "Three new frames between each pair, twice: 1.875 -> 7.5 -> 30 fps.", ("11", "12"), (1, 1)),
        Stage("Temporal decode", "The decoder with temporal layers, smoothing frames over time.", ("13",)),
        Stage("Upscale x4", "The x4 upscaler with temporal layers; it decodes the 64 px latents window by window.",
              ("15", "16", "17", "18", "19", "20"), (2, 1, 2, 1)),
        Stage(SAVE, "Decode the 256 px latents into the mp4 at 30 fps, window by window.", ("21", "23")),
    ), 4),
    "rollout": ((
        Stage(MODELS, "The toy keyframe model and its prediction adapter.", ("1", "9", "10")),
        PROMPT,
        Stage("Keyframes", "The image model draws the first; each segment is predicted from the last 2.", ("4", "5", "12")),
        Stage(SAVE, "Decode with the temporal VAE; keyframes (1.875 fps) play at 2 fps.", ("11", "6", "7", "8"), (2, 2)),
    ), 4),
    "interpolation": ((
        Stage(MODELS, "The toy keyframe model and its interpolation adapter.", ("1", "9", "10")),
        PROMPT,
        Stage("Keyframes", "4 frames of Moving Shapes at 1.875 fps, encoded to latents.", ("4", "5")),
        Stage("Interpolation", "Three new frames between each pair, twice: 1.875 -> 7.5 -> 30 fps.", ("12", "13")),
        Stage(SAVE, "Decode with the temporal VAE and write 49 frames at 30 fps.", ("11", "6", "7", "8"), (2, 2)),
    ), 5),
    "upscale": ((
        Stage(MODELS, "The toy x4 upscaler and its temporal layers.", ("1", "10", "11")),
        PROMPT,
        Stage("Low-res video", "8 frames of Moving Shapes at 64 px: any IMAGE batch works here.", ("4",)),
        Stage("Upscale x4", "64 px tiles, 8-frame chunks (one of each here), all denoised together.", ("5",)),
        Stage(SAVE, "Decode the 256 px latents with the temporal VAE and write the mp4.", ("6", "7", "8", "9"), (2, 2)),
    ), 5),
    "train": ((
        Stage(MODELS, "The toy keyframe model: its spatial layers stay frozen.", ("1",)),
        Stage("Prompt", "What the video shows; the negative prompt is empty, and so is the prompt 10% of the clips "
                        "train on.", ("2", "3", "13")),
        Stage("Train", "New temporal layers learn from one video; the loss curve is saved.", ("4", "5", "6")),
        Stage("Sample", "The model with the trained layers draws 8 frames.", ("7", "8", "9")),
        Stage(SAVE, "Decode and write the mp4.", ("10", "11", "12")),
    ), 5),
}

PROMPT_AND_NEGATIVE = Stage("Prompt", "What the video shows, and what it should not.", ("4", "5"))
RECIPE_STAGES: dict[str, tuple[tuple[Stage, ...], int]] = {
    "animatediff_sd15": ((
        Stage(MODELS, "Your SD1.5 checkpoint (fine-tunes and LoRAs work) and a motion module: v3_sd15_mm.ckpt, or "
                      "mm_sd_v15_v2.ckpt.", ("1", "2", "3")),
        PROMPT_AND_NEGATIVE,
        Stage("Sample", "16 frames are the latent batch; the module samples with the schedule it was trained with.",
              ("6", "7")),
        Stage("Temporal decode", "SVD's decoder has temporal layers and decodes SD1.x latents: less flicker.",
              ("8", "9")),
        Stage(SAVE, "Write the mp4.", ("10", "11")),
    ), 5),
    "animatelcm_sd15": ((
        Stage(MODELS, "Your SD1.5 checkpoint, AnimateLCM's spatial LoRA at 0.8 (AnimateLCM_sd15_t2v_lora) and its "
                      "motion module AnimateLCM_sd15_t2v.ckpt (auto: its LCM schedule).", ("1", "8", "2", "3")),
        PROMPT_AND_NEGATIVE,
        Stage("Sample", "The lcm sampler, 4-8 steps, cfg 1-2.", ("6", "7")),
        Stage(SAVE, "Decode and write the mp4.", ("9", "10", "11")),
    ), 4),
    "animatediff_sdxl": ((
        Stage(MODELS, "Your SDXL checkpoint and mm_sdxl_v10_beta.ckpt (auto: the linear schedule it was trained "
                      "with).", ("1", "2", "3")),
        PROMPT_AND_NEGATIVE,
        Stage("Sample", "16 frames at 1024x1024, SDXL's own size; 8 frames halve the memory.", ("6", "7")),
        Stage(SAVE, "SDXL's VAE decodes (SVD's temporal decoder reads SD1.x/2.x latents only); write the mp4.",
              ("9", "10", "11")),
    ), 4),
    "long_video_context_windows": ((
        Stage(MODELS, "Your SD1.5 checkpoint, a motion module, then core Context Windows: 16-frame windows, "
                      "overlap 4.", ("1", "2", "3", "12")),
        PROMPT_AND_NEGATIVE,
        Stage("Sample", "64 frames in one KSampler: each step runs the model window by window.", ("6", "7")),
        Stage("Temporal decode", "SVD's temporal decoder, 17 frames at a time.", ("8", "9")),
        Stage(SAVE, "Write the mp4.", ("10", "11")),
    ), 5),
    "upscale_video_file": ((
        Stage("Your video", "Any video in ComfyUI/input (upload it with the node).", ("1", "2")),
        Stage(MODELS, "x4-upscaler-ema.safetensors from Load Checkpoint, and its prompt.", ("3", "4", "5")),
        Stage("Upscale x4", "Tiles of 64 px, chunks of 8 frames, all denoised together.", ("6",)),
        Stage(SAVE, "Decode in tiles and windows, keep the source's fps.", ("7", "8", "9")),
    ), 4),
    "train_on_clips": ((
        Stage(MODELS, "Your SD1.5 checkpoint; optionally a motion module to continue (else new layers).", ("1", "2")),
        Stage("Prompt", "What the clips show, what they should not, and the empty prompt 10% of clips train on.",
              ("3", "4", "13")),
        Stage("Train", "Clips from ComfyUI/input/my_clips; saved to models/temporal_adapters.", ("5", "6")),
        Stage("Sample", "The trained layers on your checkpoint.", ("7", "8", "9")),
        Stage(SAVE, "Decode and write the mp4.", ("10", "11", "12")),
    ), 5),
}

# Long renders (workflows/long/): toy-family graphs too long for the test runs, run by hand
LONG_STAGES: dict[str, tuple[tuple[Stage, ...], int]] = {
    "minute_toy": ((
        Stage(MODELS, "The toy family the pack ships: keyframe model (64 px frames), prediction and interpolation "
                      "adapters.", ("1", "6", "7", "9", "10"), (2, 3)),
        PROMPT,
        Stage("Keyframes", "116 keyframes at 1.875 fps: the first from the image model, 19 segments of 8 predicted "
                           "from the last 2.", ("4", "5", "8"), (2, 1)),
        Stage("Interpolation", "Twice: 116 -> 461 -> 1,841 frames, 1.875 -> 7.5 -> 30 fps.", ("11", "12"), (1, 1)),
        Stage("Streamed decode", "Each window of 17 frames is decoded and written to the mp4 as it is finished; a "
                                 "minute never sits in memory as images.", ("13", "14")),
        Stage(SAVE, "Copy the mp4 to the output folder (no second encode).", ("15",)),
    ), 3),
}

PAD, GAP, ROW_GAP, TITLE, NODE_TITLE = 30, 60, 80, 50, 30
NOTE_HEIGHT = 60
COLOURS = ("#3f789e", "#8A8", "#b58b2a", "#a1309b", "#88A", "#b06634", "#2f8f83")


def lay_out(workflow: dict, name: str) -> dict:
    """`workflow` (a UI graph from the frontend's converter, node ids = API ids) with its nodes
    placed in stage groups and one Note per group; every node must belong to exactly one stage."""
    stages, per_row = {**STAGES, **RECIPE_STAGES, **LONG_STAGES}[name]
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    placed = [i for s in stages for i in s.nodes]
    if sorted(placed) != sorted(nodes):
        raise ValueError(f"{name}: stages place {sorted(placed)}, the graph has {sorted(nodes)}")
    next_id = max(int(i) for i in nodes) + 1
    notes, groups = [], []
    x = y_row = 0.0
    row_bottom = 0.0
    for index, stage in enumerate(stages):
        if index and index % per_row == 0:
            x, y_row = 0.0, row_bottom + ROW_GAP
        counts = stage.columns or (len(stage.nodes),)
        if sum(counts) != len(stage.nodes):
            raise ValueError(f"{name}: stage {stage.title!r} has {len(stage.nodes)} nodes, its columns hold {sum(counts)}")
        starts = [sum(counts[:c]) for c in range(len(counts))]
        columns = [stage.nodes[start:start + count] for start, count in zip(starts, counts)]
        widths = [max(nodes[i]["size"][0] for i in column) for column in columns]
        width = sum(widths) + PAD * (len(widths) - 1)
        top = y_row + TITLE
        notes.append({"id": next_id, "type": "Note", "pos": [x + PAD, top + NODE_TITLE], "size": [width, NOTE_HEIGHT],
                      "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": "Note",
                      "properties": {}, "widgets_values": [stage.note], "color": "#432", "bgcolor": "#653"})
        next_id += 1
        top += NODE_TITLE + NOTE_HEIGHT + PAD
        bottom, column_x = top, x + PAD
        for column, column_width in zip(columns, widths):
            y = top
            for node_id in column:
                nodes[node_id]["pos"] = [column_x, y + NODE_TITLE]
                y += NODE_TITLE + nodes[node_id]["size"][1] + PAD
            bottom, column_x = max(bottom, y), column_x + column_width + PAD
        groups.append({"id": index + 1, "title": stage.title, "bounding": [x, y_row, width + 2 * PAD, bottom - y_row],
                       "color": COLOURS[index % len(COLOURS)], "font_size": 24, "flags": {}})
        row_bottom = max(row_bottom, bottom)
        x += width + 2 * PAD + GAP
    out = dict(workflow)
    out["nodes"] = [nodes[i] for i in sorted(nodes, key=int)] + notes
    out["groups"] = groups
    out["last_node_id"] = next_id - 1
    return out
