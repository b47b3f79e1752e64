"""LoRA adapters against their base: reading PEFT's files, computing W + ΔW on demand, and
what a comparison learns about an adapter (alarms, the size of each module's change)."""
