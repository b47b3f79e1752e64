"""The Textual app. Everything here asks `weightscope.core` for data and only draws it."""
