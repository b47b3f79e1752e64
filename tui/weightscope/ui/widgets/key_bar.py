"""The bottom line: the keys the focused widget and its screen answer, as Textual's Footer shows
them, drawn as one line of text.

Textual's Footer mounts a widget per key and rebuilds them all whenever the bindings change
(focus moving from the filter to the tree, a screen opening): on two cores that cost the first
key after start 50–90 ms. Here a change of bindings redraws one line, and only when its text
changed. A click on a key presses it, as in the Footer.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


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
        self.keys: list[tuple[str, str, str, bool]] = []  # (key, shown as, description, enabled)

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen: Screen) -> None:
        if screen is not self.screen:
            return
        keys, actions = [], set()
        for _node, binding, enabled, _tooltip in screen.active_bindings.values():
            if binding.show and binding.action not in actions:
                actions.add(binding.action)
                keys.append((binding.key, self.app.get_key_display(binding), binding.description, enabled))
        if keys != self.keys:
            self.keys = keys
            self.refresh()

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-bar--key")
        description_style = self.get_component_rich_style("key-bar--description")
        line = Text(no_wrap=True)
        for _key, shown, description, enabled in self.keys:
            start = len(line)
            if line.cell_len + cell_len(f" {shown} {description} ") > self.size.width:
                break  # whole keys only, as many as fit
            line.append(f" {shown} ", key_style)
            line.append(f"{description} ", description_style)
            if not enabled:
                line.stylize("dim", start)
        return line

    def on_click(self, event: events.Click) -> None:
        x = event.x
        for key, shown, description, enabled in self.keys:
            x -= cell_len(f" {shown} {description} ")
            if x < 0:
                if enabled:
                    self.app.simulate_key(key)
                else:
                    self.app.bell()
                return
