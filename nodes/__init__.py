"""ComfyUI adapters of the pack: thin nodes over ``samplers/`` (see docs/contributing.md#rooms-and-allowed-imports)."""
