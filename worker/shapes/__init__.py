"""Training and packaging of the builtin `shapes-v1` model (pixel-space text-to-image)."""
