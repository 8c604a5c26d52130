"""Lowest layer: config, errors, atomic file writes, checkpoints, distributed set-up, metrics."""
