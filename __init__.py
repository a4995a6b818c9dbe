"""Video LDM node pack for ComfyUI: "Align your Latents" (Blattmann et al., CVPR 2023).

ComfyUI's entry point (V3): `comfy_entrypoint` registers the pack's model folders and returns
the extension with its nodes; `WEB_DIRECTORY` serves the help pages in web/docs. Host modules
are imported only when ComfyUI calls in, so tools that import this folder as a package (pytest,
the CLI) never need a running host. Licensed GPL-3.0-or-later.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .host.model_folders import register_model_folders
    from .nodes.extension import VideoLDMExtension

    register_model_folders()
    return VideoLDMExtension()
