"""weightscope: compare two model checkpoints tensor by tensor."""

__version__ = "0.1.0"
