"""The math of the Error-Control Samplers pack: pure torch, no ComfyUI imports (see
docs/contributing.md#rooms-and-allowed-imports)."""
