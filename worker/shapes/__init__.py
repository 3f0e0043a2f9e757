"""Training and packaging of the builtin shapes models (`shapes-v1`, `shapes-v2`) (pixel-space text-to-image)."""
