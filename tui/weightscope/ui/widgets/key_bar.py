"""The bottom line: the keys the focused widget and its screen answer, as Textual's Footer shows
them, drawn as one line of text.

Textual's Footer mounts a widget per key and rebuilds them all whenever the bindings change
(focus moving from the filter to the tree, a screen opening): on two cores that cost the first
key after start 50–90 ms. Here a change of bindings redraws one line, and only when its text
changed. As in the Footer, a click on a key presses it and the mouse over one shows its tooltip.
"""

from __future__ import annotations

from typing import NamedTuple

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


class Key(NamedTuple):
    key: str
    shown: str  # the key as the bar shows it
    description: str
    enabled: bool
    tooltip: str

    @property
    def label(self) -> str:
        return f" {self.shown} {self.description} "


class KeyBar(Widget):
    """One line of ` key description ` for every shown binding, one per action, as many as fit."""

    COMPONENT_CLASSES = {"key-bar--key", "key-bar--description"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        .key-bar--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .key-bar--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.keys: list[Key] = []

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen: Screen) -> None:
        if screen is not self.screen:
            return
        keys, actions = [], set()
        for _node, binding, enabled, tooltip in screen.active_bindings.values():
            if binding.show and binding.action not in actions:
                actions.add(binding.action)
                keys.append(Key(binding.key, self.app.get_key_display(binding), binding.description, enabled,
                                tooltip or binding.description))
        if keys != self.keys:
            self.keys = keys
            self.refresh()

    def shown(self) -> list[Key]:
        """The keys that fit, whole, from the first."""
        out, width = [], 0
        for key in self.keys:
            width += cell_len(key.label)
            if width > self.size.width:
                break
            out.append(key)
        return out

    def key_at(self, x: int) -> Key | None:
        for key in self.shown():
            x -= cell_len(key.label)
            if x < 0:
                return key
        return None

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        description_style = self.get_component_rich_style("key-bar--description")
        line = Text(no_wrap=True)
        for key in self.shown():
            start = len(line)
            line.append(f" {key.shown} ", key_style)
            line.append(f"{key.description} ", description_style)
            if not key.enabled:
                line.stylize("dim", start)
        return line

    def on_click(self, event: events.Click) -> None:
        key = self.key_at(event.x)
        if key is not None:
            if key.enabled:
                self.app.simulate_key(key.key)
            else:
                self.app.bell()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        key = self.key_at(event.x)
        self.tooltip = key.tooltip if key is not None else None
