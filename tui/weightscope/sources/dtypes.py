"""Element types, spelled as torch spells them, with their sizes.

Everything that crosses layers names a dtype by its torch spelling (`bfloat16`), so the
core can describe a checkpoint without importing torch.
"""

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e8m0fnu": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
    "bool": 1, "complex64": 8, "complex128": 16,
}

FLOATING = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"}

# safetensors header codes -> torch spelling
SAFETENSORS = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64",
}


def torch_dtype(name: str):
    """The torch dtype for a spelling (imports torch)."""
    import torch

    return getattr(torch, name)


def spelling(dtype) -> str:
    """The spelling of a torch dtype: `torch.bfloat16` -> `bfloat16`."""
    return str(dtype).removeprefix("torch.")
