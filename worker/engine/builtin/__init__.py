"""Models shipped with dsgen, each a diffusers-layout folder (see `worker.engine.loading`)."""
