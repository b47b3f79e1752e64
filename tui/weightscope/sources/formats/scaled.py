"""Quantized weights in safetensors checkpoints, read as the float32 values they stand for.

The layouts, as their writers save them:

- FP8 with block scales (DeepSeek-V3, transformers' fine-grained FP8): `<m>.weight` in
  float8_e4m3fn [out, in] and `<m>.weight_scale_inv` in float32 [⌈out/128⌉, ⌈in/128⌉];
  each value is its FP8 value times the scale of its 128×128 block.
- FP8 with one scale per tensor or per output channel (compressed-tensors, FBGEMM):
  `<m>.weight` and `<m>.weight_scale` of one element ([] or [1]) or [out, 1], in float32 or
  the model's dtype; compressed-tensors saves block scales under this name too.
  `input_scale` (and `k_scale`, `v_scale`) scale activations: they are listed, not applied.
- MXFP4 (gpt-oss): `<p>_blocks` in uint8 [..., rows, G, 16], two FP4 (E2M1) values a byte,
  low nibble first, and `<p>_scales` in uint8 [..., rows, G], an E8M0 exponent 2^(s−127)
  per 32 values (255 is NaN). transformers dequantizes them to [..., rows, 32·G] and swaps
  the last two dimensions, as the BF16 checkpoints it writes store `<p>`; that is how `<p>`
  is shown here. The original gpt-oss checkpoint's `<p>.blocks`/`<p>.scales` are read as
  its own code reads them, without the swap.

Each such weight becomes one tensor, under the name (and in the shape) its BF16 source
has: `quant` names the format ("fp8_e4m3 128×128", "mxfp4"), `dtype` is float32 and `span`
holds the stored bytes, as GGUF's quantized tensors do. Reading it decodes a bounded chunk
of rows at a time into the output. The scales stay listed as tensors of their own, beside
their weight. A scale whose shape fits its weight in none of these ways spoils that weight
only, with a reason (docs/reading-untrusted-files.md, rules 3 and 6).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from itertools import compress, repeat

import numpy as np

from weightscope.sources.checkpoint import TensorInfo, TensorSource, TensorUnreadable
from weightscope.sources.dtypes import FLOATING, torch_dtype
from weightscope.sources.files import physical_memory

FP8 = {"float8_e4m3fn": "fp8_e4m3", "float8_e5m2": "fp8_e5m2"}
FP8_SCALES = (".weight_scale_inv", ".weight_scale")
MXFP4_PARTS = (("_blocks", "_scales", True), (".blocks", ".scales", False))  # (blocks, scales, swap last two dims)
MXFP4_BLOCKS = tuple(blocks for blocks, _, _ in MXFP4_PARTS)
ACTIVATION_SCALES = (".input_scale", ".input_scale_ub", ".k_scale", ".v_scale")
SCALE_NAMES = FP8_SCALES + MXFP4_BLOCKS + ACTIVATION_SCALES
BLOCK = 128  # the side of an FP8 scale's block (DeepSeek-V3's weight_block_size)
FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
FP4_PAIRS = np.stack([FP4[np.arange(256) & 0x0F], FP4[np.arange(256) >> 4]], axis=1)  # byte -> (low, high) value
E8M0 = np.where(np.arange(256) == 255, np.nan, np.ldexp(1.0, np.arange(256) - 127)).astype(np.float32)
CHUNK_BYTES = 1 << 22  # decoded bytes per step


@dataclass(frozen=True)
class Recipe:
    """How one quantized weight decodes.

    Attributes:
        data: the stored FP8 weight, or the MXFP4 blocks.
        scale: its scales, as stored.
        block: FP8: the rows and columns of the weight, seen as 2-D, that one scale covers.
        swap: MXFP4: whether the last two dimensions are swapped after decoding.
    """

    data: TensorInfo
    scale: TensorInfo
    block: tuple[int, int] | None = None
    swap: bool = False


@dataclass
class Scaled:
    """A checkpoint's tensors with its quantized weights as decoded tensors.

    Attributes:
        tensors: every tensor by name, in the order given, quantized weights replaced.
        recipes: file -> (tensor name -> how it decodes).
        notes: what the user should know about it.
    """

    tensors: dict[str, TensorInfo]
    recipes: dict[str, dict[str, Recipe]]
    notes: list[str]


def find(tensors: dict[str, TensorInfo]) -> Scaled:
    """The quantized weights among `tensors`, each with its scales, as decoded tensors."""
    names = "\n".join(tensors)
    if "scale" not in names and "blocks" not in names:  # (nearly always: a first look in C at 100,000 names)
        return Scaled(tensors, {}, [])
    replaced: dict[str, TensorInfo] = {}  # stored name -> the decoded tensor that takes its place
    recipes: dict[str, dict[str, Recipe]] = {}
    unused: list[str] = []
    kinds: set[str] = set()  # the suffixes of the scales applied
    named = list(compress(tensors, map(str.endswith, tensors, repeat(SCALE_NAMES))))
    for name in named:
        if not name.endswith(FP8_SCALES):
            continue
        scale = tensors[name]
        suffix = next(s for s in FP8_SCALES if name.endswith(s))
        weight = tensors.get(name.removesuffix(suffix) + ".weight")
        if weight is None or weight.dtype not in FP8 or weight.tied_to or weight.name in replaced:
            unused.append(name)
            continue
        recipe = fp8_recipe(weight, scale)
        quant = f"{FP8[weight.dtype]} {block_label(recipe)}" if isinstance(recipe, Recipe) else None
        replaced[weight.name] = decoded(weight.name, weight, recipe, quant)
        if isinstance(recipe, Recipe):
            recipes.setdefault(weight.file, {})[weight.name] = recipe
            kinds.add(suffix.lstrip("."))
    for name in named:
        blocks = tensors[name]
        if not name.endswith(MXFP4_BLOCKS) or blocks.dtype != "uint8":
            continue
        blocks_suffix, scales_suffix, swap = next(part for part in MXFP4_PARTS if name.endswith(part[0]))
        stem = name.removesuffix(blocks_suffix)
        scales = tensors.get(stem + scales_suffix)
        if scales is None or stem in tensors:
            continue
        recipe = mxfp4_recipe(blocks, scales, swap)
        replaced[name] = decoded(stem, blocks, recipe, "mxfp4")
        if isinstance(recipe, Recipe):
            recipes.setdefault(blocks.file, {})[stem] = recipe
            kinds.add(scales_suffix)
    if replaced:
        tensors = {info.name: info for info in (replaced.get(name, info) for name, info in tensors.items())}
    activations = [name for name in named if name.endswith(ACTIVATION_SCALES)]
    return Scaled(tensors, recipes, notes(replaced, sorted(kinds), activations, unused))


def decoded(name: str, data: TensorInfo, recipe: Recipe | str, quant: str | None) -> TensorInfo:
    """The tensor shown for a quantized weight: float32 values in the source's shape, or why not."""
    stored = data.name if data.name != name else None
    if isinstance(recipe, str):
        return TensorInfo(name, data.dtype, data.shape, data.file, error=recipe, stored_name=stored)
    return TensorInfo(name, "float32", decoded_shape(data, recipe), data.file, data.span, quant=quant,
                      stored_name=stored)


def fp8_recipe(weight: TensorInfo, scale: TensorInfo) -> Recipe | str:
    """How an FP8 weight decodes with this scale, or why it cannot (one line naming the file)."""
    if weight.error or scale.error:
        return weight.error or scale.error
    if scale.dtype not in FLOATING or scale.dtype in FP8:
        return f"{scale.file}: {scale.name} is {scale.dtype}, not a float scale"
    shape, scales = weight.shape, scale.shape
    rows, cols = rows_and_columns(shape)
    if len(shape) == 2 and scales == (-(-rows // BLOCK), -(-cols // BLOCK)):
        return Recipe(weight, scale, (BLOCK, BLOCK))
    if math.prod(scales) == 1:
        return Recipe(weight, scale, (max(rows, 1), max(cols, 1)))
    if len(shape) == 2 and scales == (rows, 1):
        return Recipe(weight, scale, (1, max(cols, 1)))
    return (f"{scale.file}: {scale.name} of shape {list(scales)} scales {weight.name} {list(shape)} neither per "
            f"tensor, per channel ([{rows}, 1]) nor in {BLOCK}×{BLOCK} blocks")


def block_label(recipe: Recipe) -> str:
    """How an FP8 weight's scales cover it, for its dtype column: `128×128`, `per-channel`, `per-tensor`."""
    if recipe.block == (BLOCK, BLOCK):
        return f"{BLOCK}×{BLOCK}"
    return "per-channel" if recipe.block[0] == 1 and rows_and_columns(recipe.data.shape)[0] > 1 else "per-tensor"


def mxfp4_recipe(blocks: TensorInfo, scales: TensorInfo, swap: bool) -> Recipe | str:
    """How MXFP4 blocks decode with these scales, or why they cannot (one line naming the file)."""
    if blocks.error or scales.error:
        return blocks.error or scales.error
    if scales.dtype != "uint8":
        return f"{scales.file}: MXFP4 scales are uint8 exponents, not {scales.dtype}"
    if len(blocks.shape) < 3 or blocks.shape[-1] != 16 or scales.shape != blocks.shape[:-1]:
        return (f"{blocks.file}: MXFP4 blocks of shape {list(blocks.shape)} need [..., rows, groups, 16] and "
                f"scales of [..., rows, groups], not {list(scales.shape)}")
    return Recipe(blocks, scales, swap=swap)


def decoded_shape(data: TensorInfo, recipe: Recipe) -> tuple[int, ...]:
    if recipe.block is not None:
        return data.shape
    *lead, rows, groups, _ = data.shape
    return (*lead, 32 * groups, rows) if recipe.swap else (*lead, rows, 32 * groups)


def rows_and_columns(shape: tuple[int, ...]) -> tuple[int, int]:
    """A weight seen as 2-D: its first dimension by the rest."""
    rows = shape[0] if shape else 1
    return rows, math.prod(shape) // rows if rows else 0


def notes(replaced: dict[str, TensorInfo], scales: list[str], activations: list[str], unused: list[str]) -> list[str]:
    out = []
    kinds = Counter(info.quant for info in replaced.values() if info.quant)
    if kinds:
        listed = ", ".join(f"{kind} ×{n}" for kind, n in kinds.most_common())
        out.append(f"quantized weights ({listed}) are compared as their dequantized float32 values, under the "
                   f"names their source has; their scales ({', '.join(scales)}) are listed beside them, already "
                   "applied")
    if activations:
        kinds = Counter(next(s for s in ACTIVATION_SCALES if n.endswith(s)).lstrip(".") for n in activations)
        listed = ", ".join(f"{kind} ×{n}" for kind, n in kinds.most_common())
        out.append(f"activation scales ({listed}) are listed as stored: they scale activations, not weights")
    if unused:
        shown = ", ".join(unused[:5]) + (f", … ({len(unused) - 5} more)" if len(unused) > 5 else "")
        out.append(f"{len(unused)} weight scales have no FP8 weight beside them and are not applied: {shown}")
    return out


class ScaledSource:
    """One file's tensors with its quantized weights decoded: a `TensorSource` over the file's
    own reader. The last decoded tensor is kept, since a scan reads it for statistics and
    again for histograms."""

    def __init__(self, inner: TensorSource, readers: dict[str, TensorSource], recipes: dict[str, Recipe]):
        """Args:
            readers: every file's own reader by path (a scale may lie in another shard).
        """
        self.path = inner.path
        self.inner, self.readers, self.recipes = inner, readers, recipes
        self._last: tuple[str, np.ndarray] | None = None

    def plain(self, info: TensorInfo) -> bool:
        return info.name not in self.recipes and self.inner.plain(info)

    def raw(self, info: TensorInfo) -> np.ndarray:
        recipe = self.recipes.get(info.name)
        if recipe is None:
            return self.inner.raw(info)
        if self._last is not None and self._last[0] == info.name:
            return self._last[1]
        size = 4 * math.prod(info.shape)
        memory = physical_memory()
        if memory is not None and size > memory // 2:
            raise TensorUnreadable(f"{self.path}: {info.name} needs {size} bytes decoded, "
                                   "more than half of this machine's memory")
        out = np.empty(size, np.uint8)
        values = out.view(np.float32)
        with np.errstate(all="ignore"):  # NaN or Inf scales decode to NaN/Inf, which statistics count
            if recipe.block is not None:
                self._decode_fp8(recipe, values)
            else:
                self._decode_mxfp4(recipe, values.reshape(info.shape))
        self._last = (info.name, out)
        return out

    def load(self, info: TensorInfo):
        import torch

        if info.name not in self.recipes:
            return self.inner.load(info)
        return torch.from_numpy(self.raw(info)).view(torch.float32).reshape(info.shape)

    def close(self) -> None:
        self._last = None
        self.inner.close()

    def _stored(self, info: TensorInfo) -> np.ndarray:
        return self.readers[info.file].raw(info)

    def _decode_fp8(self, recipe: Recipe, values: np.ndarray) -> None:
        rows, cols = rows_and_columns(recipe.data.shape)
        if not values.size:
            return
        table = fp8_values(recipe.data.dtype)
        codes = self._stored(recipe.data).reshape(rows, cols)
        scales = self._scales(recipe.scale).reshape(-(-rows // recipe.block[0]), -1)
        values = values.reshape(rows, cols)
        (height, width), step = recipe.block, max(1, CHUNK_BYTES // (4 * cols))
        for first in range(0, rows, step):
            last = min(rows, first + step)
            part = values[first:last]
            np.take(table, codes[first:last], out=part, mode="clip")  # "raise" would buffer a copy
            top = first // height  # the scales of the blocks these rows lie in, one row of scales per row
            band = np.repeat(scales[top:-(-last // height)], height, axis=0)[first - top * height:last - top * height]
            part *= band if band.shape[1] == 1 else np.repeat(band, width, axis=1)[:, :cols]

    def _decode_mxfp4(self, recipe: Recipe, values: np.ndarray) -> None:
        *lead, rows, groups, _ = recipe.data.shape
        experts, width = math.prod(lead), 32 * groups
        if not values.size:
            return
        blocks = self._stored(recipe.data).reshape(experts, rows, 16 * groups)
        exponents = self._stored(recipe.scale).reshape(experts, rows, groups)
        values = values.reshape(experts, *((width, rows) if recipe.swap else (rows, width)))
        step = max(1, CHUNK_BYTES // (4 * width))
        for expert in range(experts):
            for first in range(0, rows, step):
                last = min(rows, first + step)
                part = FP4_PAIRS[blocks[expert, first:last]].reshape(last - first, groups, 32)
                part *= E8M0[exponents[expert, first:last]][..., None]
                if recipe.swap:
                    values[expert, :, first:last] = part.reshape(last - first, width).T
                else:
                    values[expert, first:last] = part.reshape(last - first, width)

    def _scales(self, info: TensorInfo) -> np.ndarray:
        """A scale tensor as float32 (small: one value per block, channel or tensor)."""
        import torch

        raw = self._stored(info)
        if not raw.size:
            return np.empty(0, np.float32)
        return torch.from_numpy(raw).view(torch_dtype(info.dtype)).float().numpy()


@functools.cache
def fp8_values(dtype: str) -> np.ndarray:
    """The float32 value of each of the 256 bytes of an FP8 type, as torch converts them."""
    import torch

    return torch.arange(256, dtype=torch.uint8).view(torch_dtype(dtype)).float().numpy()


def wrap(sources: list, tensors: dict[str, TensorInfo]) -> tuple[dict[str, TensorInfo], dict[str, object], list[str]]:
    """A checkpoint's tensors and readers with its quantized weights decoded.

    Args:
        sources: the opened files.
        tensors: their tensors by name.

    Returns:
        (tensors, readers by path, notes); unchanged where nothing is quantized.
    """
    readers = {s.path: s for s in sources}
    scaled = find(tensors)
    wrapped = {path: ScaledSource(source, readers, scaled.recipes[path]) if path in scaled.recipes else source
               for path, source in readers.items()}
    return scaled.tensors, wrapped, scaled.notes
