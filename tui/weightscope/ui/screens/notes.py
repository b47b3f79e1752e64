"""The notes screen on `i`: what the user should know about how the checkpoints were read.

Every note a checkpoint's reading left (files skipped, quantized tensors dequantized, rows put
back in order, a LoRA adapter's scaling and alarms), and how the names of A and B were
paired, under the side it concerns.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def noted(heading: str, notes: list[str]) -> Text:
    """A heading and its notes as a list; the heading alone says when there are none."""
    text = Text.assemble((heading, "bold"))
    if not notes:
        return text.append(" — no notes", "dim")
    for note in notes:
        text.append("\n • ").append(note)
    return text


class NotesScreen(ModalScreen[None]):
    """Every note, under A, B and the pairing."""

    BINDINGS = [Binding("escape,q,i", "dismiss", "Close")]

    def __init__(self, sections: list[tuple[str, list[str]]]):
        """
        Args:
            sections: (heading, notes) in the order shown.
        """
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="notes"):
            for heading, notes in self.sections:
                yield Static(noted(heading, notes), classes="notes-section")
