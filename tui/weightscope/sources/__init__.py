"""From a path to a `Checkpoint`: files, formats, discovery, hub ids and LoRA adapters.

Everything here reads files that may come from strangers; `docs/reading-untrusted-files.md`
holds the rules every reader follows. Nothing here imports from the packages above it
(`compare`, `analysis`, `report`, `engine`, `ui`).
"""
