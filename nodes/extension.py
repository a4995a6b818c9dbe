"""The pack as a ComfyUI extension: its nodes."""

from comfy_api.v0_0_2 import ComfyExtension, io

from . import NODES


class VideoLDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
