"""The one message the app receives from outside its event loop: what the engine said."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class FromEngine(Message):
    """A message of the engine's (`engine.protocol`), passed on by the thread that reads its pipe."""

    message: object
