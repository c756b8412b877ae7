"""Error-Control Samplers: POLARIS, Noise Awareness Guidance, DiffIER and VRG for ComfyUI. Wiring only
(docs/contributing.md#architecture)."""

from .nodes import diffier, inversion, nag, polaris, vrg
from .nodes.comfy_seam import ComfyExtension, io
from .nodes.registry import register_dropdowns

WEB_DIRECTORY = "./web"
NODE_MODULES = [diffier, inversion, nag, polaris, vrg]

register_dropdowns(NODE_MODULES)


class ErrorControlExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in NODE_MODULES for node in module.NODES]


async def comfy_entrypoint() -> ErrorControlExtension:
    return ErrorControlExtension()
