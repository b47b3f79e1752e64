"""The Textual app. Everything here asks the engine for data and only draws it."""
