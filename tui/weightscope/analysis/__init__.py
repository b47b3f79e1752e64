"""What the scan's figures mean: the name hierarchy, a model's anatomy, spectra, change maps, LoRA notes."""
