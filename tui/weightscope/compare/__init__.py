"""Comparing two checkpoints: aligning their names, the statistics kernels, the scan and its cache."""
