"""One module per file format; each turns one file into `TensorInfo`s and a `TensorSource`."""
