"""Pure drawing: small line plots as ComfyUI IMAGE tensors and as the data the web extension draws (no ComfyUI import)."""
