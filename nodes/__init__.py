"""ComfyUI adapters of the pack: thin nodes over ``samplers/`` (see DESIGN.md)."""
