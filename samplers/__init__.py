"""The math of the Error-Control Samplers pack: pure torch, no ComfyUI imports (see DESIGN.md)."""
