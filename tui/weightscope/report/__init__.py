"""A comparison written out: the `diff` text and JSON document, the exit status, exports."""
