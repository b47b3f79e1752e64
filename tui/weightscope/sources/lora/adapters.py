"""Opening a PEFT LoRA adapter as side B: the base, with W + ΔW wherever the adapter changes it.

PEFT saves only what it trains: per adapted module the factors `lora_A` (r × in) and
`lora_B` (out × r) under `base_model.model.<module>.lora_A.weight`, embeddings' factors as
`lora_embedding_A/B` parameters, and whole copies of the modules in `modules_to_save` (and of
resized embeddings) under their own names. B is built on the base's names: a tensor the
adapter touches is computed on demand (see `lora.checkpoint`), a replaced one is the
adapter's copy, every other tensor is the base's own and so compares identical; the factors
stay browsable beside their module (`….q_proj.lora_A.weight`), as tensors only B has. A full
PEFT-wrapped state dict (`….base_layer.weight` beside `….lora_A.default.weight`,
`….modules_to_save.default.weight`) reads the same way, with W taken from the file itself.

A module whose merged weight is not W + scaling · B@A (DoRA, convolution factors, factors
whose rank or shape disagree with the config or W) is marked with an error that says why,
never computed as if it were plain LoRA. Without adapter_config.json the scaling is unknown:
unless the user gives one (`GivenScaling`), every adapted weight stays W, with an alarm that
ΔW is not applied. Alarms known from the adapter alone (factors that are all zero, modules
that match no base tensor) are raised here, as notes and roles.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import compress, repeat

import numpy as np

from weightscope.sources.checkpoint import Checkpoint, TensorInfo, TensorSource, TensorUnreadable
from weightscope.sources.discover import open_checkpoint
from weightscope.sources.dtypes import FLOATING, ITEMSIZE
from weightscope.sources.lora.checkpoint import LoraCheckpoint, LoraModule, LoraSource
from weightscope.sources.lora.config import CONFIG, GivenScaling, LoraConfig, read_config

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."  # where PeftModel keeps the base model: every LoRA key starts with it
LISTED = 5  # names quoted in a note before "…"

# `<module>.lora_A[.<adapter>].weight`: saved adapters drop the adapter name, wrapped state dicts keep it.
FACTOR = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.(?P<param>weight|bias)$")
# Embeddings hold their factors as parameters, without `.weight`.
EMBEDDING_FACTOR = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<kind>A|B)(?:\.(?P<adapter>[^.]+))?$")
MAGNITUDE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
MODULES_TO_SAVE = re.compile(r"^(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<param>.+)$")
ORIGINAL = re.compile(r"^(?P<module>.+)\.original_module\.(?P<param>.+)$")
BASE_LAYER = re.compile(r"^(?P<module>.+)\.base_layer\.(?P<param>[^.]+)$")
LORA_KEY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.|$)")
# transformers' Conv1D modules (GPT-2, OpenAI GPT, ImageGPT, Decision Transformer), which store W as (in, out)
CONV1D = ("c_attn", "c_proj", "c_fc", "q_attn")


# Opening


def open_over(base: Checkpoint, path: str, given: GivenScaling | None = None,
              stored: Checkpoint | None = None) -> Checkpoint:
    """The checkpoint at `path`, as a LoRA checkpoint over `base` where it is one.

    Args:
        given: the scaling to use where the adapter has no adapter_config.json.
        stored: the weights `locate(path)` names, where they were opened already.
    """
    weights, config_path = locate(path)
    stored = stored or open_checkpoint(weights)
    try:
        peft_keys = PREFIX in "\n".join(stored.tensors) and any(  # (nearly always not: a first look in C)
            map(LORA_KEY.search, compress(stored.tensors, map(str.startswith, stored.tensors, repeat(PREFIX)))))
        if not peft_keys and (config_path is None or weights == path):
            return stored
        config = read_config(config_path) if config_path else None
        if config is not None and config.peft_type != "LORA":
            stored.notes.append(f"PEFT type {config.peft_type} is not supported (LoRA only): "
                                "the adapter's tensors are shown as stored, not applied to A")
            return stored
        return apply(base, stored, config, [config_path] if config_path else [], path, given=given)
    except BaseException:
        stored.close()
        raise


def locate(path: str) -> tuple[str, str | None]:
    """(the weights to open, adapter_config.json or None): an adapter directory's weights
    file, or `path` itself with a config beside it."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    config = os.path.join(directory, CONFIG)
    if not os.path.lexists(config):
        return path, None
    if os.path.isdir(path):
        for name in WEIGHTS:
            if os.path.lexists(os.path.join(path, name)):
                return os.path.join(path, name), config
    return path, config


# Building the checkpoint


@dataclass
class Parsed:
    """The adapter's tensors by what they are, keyed by names without `base_model.model.`.

    Attributes:
        factors: module -> {"A": lora_A, "B": lora_B, "bias": lora_B's bias where there is one}.
        embedding: modules whose factors are `lora_embedding_A/B`.
        magnitude: module -> DoRA magnitude vector.
        replaced: tensor name -> a whole tensor stored in the adapter.
        saved, base_layer: names in `replaced` that came from `modules_to_save.<adapter>.` or `base_layer.`.
        extras: tensors shown as stored, each with its role.
        adapters: the adapter names a wrapped state dict's keys carry; `chosen` is the one applied.
        adapted: every module with LoRA factors, of any adapter.
    """

    factors: dict[str, dict[str, TensorInfo]] = field(default_factory=dict)
    embedding: set[str] = field(default_factory=set)
    magnitude: dict[str, TensorInfo] = field(default_factory=dict)
    replaced: dict[str, TensorInfo] = field(default_factory=dict)
    saved: set[str] = field(default_factory=set)
    base_layer: set[str] = field(default_factory=set)
    extras: dict[str, tuple[TensorInfo, str]] = field(default_factory=dict)
    adapters: set[str] = field(default_factory=set)
    chosen: str | None = None
    adapted: set[str] = field(default_factory=set)


def parse(stored: Checkpoint) -> Parsed:
    """Sort the stored tensors; of several adapters in one state dict, "default" (or the first) is applied."""
    keyed = [(info.name.removeprefix(PREFIX), info) for info in stored.tensors.values()]
    names = {adapter_of(key) for key, _ in keyed} - {None}
    parsed = Parsed(adapters=names, chosen="default" if "default" in names or not names else sorted(names)[0])
    for key, info in keyed:
        adapter = adapter_of(key)
        if m := FACTOR.match(key) or EMBEDDING_FACTOR.match(key):
            parsed.adapted.add(m["module"])
        if adapter is not None and adapter != parsed.chosen:
            parsed.extras[key] = (info, f"adapter '{adapter}', not applied (only '{parsed.chosen}' is)")
        elif m := FACTOR.match(key):
            parsed.factors.setdefault(m["module"], {})["bias" if m["param"] == "bias" else m["kind"][-1]] = info
        elif m := EMBEDDING_FACTOR.match(key):
            parsed.factors.setdefault(m["module"], {})[m["kind"]] = info
            parsed.embedding.add(m["module"])
        elif m := MAGNITUDE.match(key):
            parsed.magnitude[m["module"]] = info
        elif ".lora_" in key or "trainable_tokens_delta" in key:
            parsed.extras[key] = (info, "a PEFT tensor of a kind weightscope does not apply; shown as stored")
        elif m := MODULES_TO_SAVE.match(key):
            parsed.replaced[f"{m['module']}.{m['param']}"] = info
            parsed.saved.add(f"{m['module']}.{m['param']}")
        elif m := ORIGINAL.match(key):
            parsed.extras[key] = (info, f"PEFT's copy of the original {m['module']}.{m['param']} (modules_to_save)")
        elif m := BASE_LAYER.match(key):
            parsed.replaced[f"{m['module']}.{m['param']}"] = info
            parsed.base_layer.add(f"{m['module']}.{m['param']}")
        else:
            parsed.replaced[key] = info
    return parsed


def adapter_of(key: str) -> str | None:
    """The adapter name a wrapped state dict's key carries; None for a saved adapter's keys."""
    for pattern in (FACTOR, EMBEDDING_FACTOR, MAGNITUDE, MODULES_TO_SAVE):
        m = pattern.match(key)
        if m:
            return None if m["adapter"] == "weight" else m["adapter"]  # `lora_magnitude_vector.weight`
    return None


def resolve(name: str, names) -> str | None:
    """The base's name for a tensor: as is, or with a `model.` prefix removed or added."""
    for candidate in (name, name.removeprefix("model."), f"model.{name}"):
        if candidate in names:
            return candidate
    return None


@dataclass
class Built:
    """The tensors of a LoRA checkpoint as they are assembled.

    Attributes:
        originals: for each tensor read from the adapter's files, the info those files know
            it by (the name shown can differ from the name stored).
    """

    tensors: dict[str, TensorInfo]
    originals: dict[str, TensorInfo] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    adapter_parameters: set[str] = field(default_factory=set)

    def put(self, name: str, info: TensorInfo, why: str | None = None) -> None:
        """Show a stored tensor under `name`, in place of any tensor of that name."""
        self.tensors[name] = info.shown_as(name)
        self.originals[name] = info
        if why:
            self.roles[name] = why

    def add(self, name: str, info: TensorInfo, why: str, factor: bool = False) -> None:
        """Show a tensor that is not a model weight under `name`, or under its stored name where `name` is taken.

        Args:
            factor: a factor of the adapter (or a DoRA magnitude): its own parameter, not a
                model weight, so no difference between the models.
        """
        shown = info.name if name in self.tensors else name
        self.put(shown, info, why)
        if factor:
            self.adapter_parameters.add(shown)

    def computed(self, name: str, recipe: LoraModule | str, weight: TensorInfo) -> None:
        if isinstance(recipe, LoraModule):
            self.tensors[name] = TensorInfo(name, "float32", weight.shape, recipe.lora_b.file, origin=recipe.origin)
            self.roles[name] = f"computed: {recipe.origin}"
        else:
            self.tensors[name] = TensorInfo(name, weight.dtype, weight.shape, weight.file, error=recipe)
            self.roles[name] = recipe

    def ties(self) -> dict[str, TensorInfo]:
        """The tensors, with `tied_to` naming the tied tensor as shown rather than as stored."""
        shown = {info.name: name for name, info in self.originals.items()}
        return {name: info._replace(tied_to=shown.get(info.tied_to, info.tied_to)) if info.tied_to else info
                for name, info in self.tensors.items()}


def apply(base: Checkpoint | None, stored: Checkpoint, config: LoraConfig | None, config_files: list[str],
          path: str, extras: bool = True, given: GivenScaling | None = None) -> LoraCheckpoint:
    """A LoRA checkpoint from the adapter's stored tensors over `base`.

    When every adapted module has its `base_layer` in `stored` (a full PEFT-wrapped state
    dict), `stored` stands alone and `base` lends nothing.

    Args:
        config_files: the config's path, counted among the checkpoint's files (so the result
            cache sees a change of alpha).
        extras: also show the tensors that are not model weights (factors, magnitude vectors,
            modules matching no base tensor), as tensors only this side has.
        given: the scaling the user gives, used when `config` is None.
    """
    parsed = parse(stored)
    full = bool(parsed.adapted) and all(f"{m}.weight" in parsed.base_layer for m in parsed.adapted)
    on_base = base is not None and not full
    built = Built(dict(base.tensors) if on_base else {})
    mapped = 0
    for name, info in parsed.replaced.items():
        target = resolve(name, built.tensors) if on_base else name
        mapped += target not in (None, name)
        if target is None:
            if extras:
                built.add(name, info, "stored in the adapter; A has no tensor of this name")
        elif on_base or name in parsed.saved:
            module = name.rpartition(".")[0]
            why = ("modules_to_save" if name in parsed.saved or (config is not None and config.saves(module))
                   else "its copy of the base layer" if name in parsed.base_layer else "trained in the adapter")
            built.put(target, info, f"replaced whole by the adapter ({why})")
        else:
            built.put(target, info)

    modules: dict[str, LoraModule] = {}
    unmatched: list[str] = []
    flipped: list[str] = []  # modules whose W's layout overrides the config's fan_in_fan_out, as PEFT does
    layout = square_layout(parsed, built.tensors)
    for module, slots in parsed.factors.items():
        target = resolve(f"{module}.weight", built.tensors)
        if target is None:
            unmatched.append(module)
            if extras:
                for slot, info in slots.items():
                    built.add(info.name.removeprefix(PREFIX), info,
                              f"LoRA factor {slot} of {module}, which matches no tensor of A", factor=True)
            continue
        mapped += target != f"{module}.weight"
        weight = built.originals.get(target, built.tensors[target])
        embedding = module in parsed.embedding
        recipe = module_tensor(target, module, weight, slots, embedding, parsed.magnitude.get(module), config,
                               given, layout)
        if recipe is None:
            why = f"ALARM ΔW not applied: no {CONFIG} gives its scaling (--lora-alpha or --lora-scaling would)"
            built.roles[target] = f"{built.roles[target]}; {why}" if target in built.roles else why
        else:
            built.computed(target, recipe, weight)
        if isinstance(recipe, LoraModule):
            modules[target] = recipe
            if on_base and target in built.originals:
                built.roles[target] += "; W is the adapter's own copy"
            if config is not None and not embedding and recipe.transpose != config.fan_in_fan_out:
                flipped.append(target)
        bias = resolve(f"{module}.bias", built.tensors) if "bias" in slots else None
        if bias is not None:
            old = built.tensors[bias]
            why = f"lora_bias adds scaling · lora_B.bias to {bias}, which weightscope does not apply"
            built.tensors[bias] = TensorInfo(bias, old.dtype, old.shape, old.file, error=why)
            built.roles[bias] = why
        if extras:
            stem = target.removesuffix(".weight")
            for slot, info in slots.items():
                built.add(stem + info.name.removeprefix(PREFIX).removeprefix(module), info,
                          f"LoRA factor {slot} of {target} (not a model weight)", factor=True)
            if module in parsed.magnitude:
                info = parsed.magnitude[module]
                built.add(stem + info.name.removeprefix(PREFIX).removeprefix(module), info,
                          f"DoRA magnitude vector of {target}: DoRA is not supported, shown as stored", factor=True)
    if extras:
        for key, (info, why) in parsed.extras.items():
            built.add(key, info, why)

    readers = {**(base.sources if on_base else {}), **stored.sources}
    notes = summary_notes(base if on_base else None, config, given, path, modules, parsed, built.roles, extras)
    if flipped:
        notes.append(fan_in_fan_out_note(config.fan_in_fan_out, flipped))
    if unmatched:
        notes.append(f"ALARM: {plural(len(unmatched), 'adapter module')} match no tensor of A: {listed(unmatched)}")
    notes += zero_alarms(modules, built.roles, readers)
    if mapped:
        notes.append(f"names mapped: 'model.' prefix differs between the adapter and A ({mapped} tensors)")
    files = (list(base.files) if on_base else []) + list(stored.files) + config_files
    source = LoraSource(stored.files[0] if stored.files else path, readers, built.originals, modules,
                        list(stored.sources.values()))
    sources = {**(base.sources if on_base else {}), **dict.fromkeys(stored.files, source)}
    return LoraCheckpoint(path, "peft-lora", files, built.ties(), stored.notes + notes, stored.extras, stored.metadata,
                          sources, modules, built.roles, config, built.adapter_parameters)


def module_tensor(name: str, module: str, weight: TensorInfo, slots: dict[str, TensorInfo], embedding: bool,
                  magnitude: TensorInfo | None, config: LoraConfig | None, given: GivenScaling | None = None,
                  layout: bool | None = None) -> LoraModule | str | None:
    """The recipe for W + ΔW; why there is none (one line); or None where no scaling is known
    (neither a config nor a given one), so that W stays W.

    Args:
        layout: whether the model stores square weights transposed, as `square_layout` found.
    """
    a, b = slots.get("A"), slots.get("B")
    if weight.error:
        return weight.error
    if config is None and given is None:
        return None
    if a is None or b is None:
        return f"{module}: lora_{'A' if a is None else 'B'} is missing, so ΔW is unknown"
    if magnitude is not None or (config is not None and config.unsupported):
        what = ", ".join(config.unsupported) if config is not None and config.unsupported else "DoRA"
        return f"{what} is not supported: the merged weight is not W + ΔW; the factors are shown as stored"
    for info in (a, b):
        if info.error:
            return info.error
        if info.shape is None or len(info.shape) != 2:
            return f"{info.name}: LoRA factors of shape {list(info.shape or [])} (convolutions, ...) are not supported"
        if info.dtype not in FLOATING or weight.dtype not in FLOATING:
            return f"{info.name}: {info.dtype} factors and {weight.dtype} weights cannot form W + ΔW"
    if a.shape[0] != b.shape[1]:
        return f"{module}: lora_A has rank {a.shape[0]} but lora_B has {b.shape[1]}"
    config = config or given.config(a.shape[0])
    r = config.rank(module)
    if a.shape[0] != r:
        return f"{module}: {CONFIG} gives r={r} for this module but its factors have rank {a.shape[0]}"
    shape = tuple(weight.shape or ())
    transpose = stored_transposed(module, shape, a, b, embedding, layout)
    if transpose is None:
        plain, turned = [b.shape[0], a.shape[1]], [a.shape[1], b.shape[0]]
        fits = f"(B@A)ᵀ has shape {turned}" if embedding else f"B@A has shape {plain} and (B@A)ᵀ {turned}"
        return f"{module}: scaling · {fits}, but W has {list(shape)}"
    return LoraModule(name, module, weight, a, b, r, config.alpha_for(module), config.scaling(module), transpose)


def stored_transposed(module: str, shape: tuple, a: TensorInfo, b: TensorInfo, embedding: bool,
                      layout: bool | None) -> bool | None:
    """Whether W is stored (in, out), so that ΔW = scaling · (B@A)ᵀ; None when W fits neither way.

    PEFT decides this per module, whatever `fan_in_fan_out` says in the config: it turns it off
    for nn.Linear (W stored (out, in)) and on for transformers' Conv1D (W stored (in, out)), and
    embeddings always transpose. The module's type is told here by W's shape against the
    factors'; a square W takes `layout`, else its name (GPT-2's Conv1D names).
    """
    plain, turned = (b.shape[0], a.shape[1]), (a.shape[1], b.shape[0])
    if embedding:
        return True if shape == turned else None
    if shape not in (plain, turned):
        return None
    if plain != turned:
        return shape == turned
    return layout if layout is not None else module.rpartition(".")[2] in CONV1D


def square_layout(parsed: Parsed, tensors: dict[str, TensorInfo]) -> bool | None:
    """Whether this model stores its adapted weights transposed (Conv1D), as the adapter's
    non-square modules show it, each W matching only one of B@A and (B@A)ᵀ; None when none
    shows it or they disagree (GPT-2 with a Linear `lm_head` targeted too)."""
    seen = set()
    for module, slots in parsed.factors.items():
        a, b, target = slots.get("A"), slots.get("B"), resolve(f"{module}.weight", tensors)
        if module in parsed.embedding or target is None or not all(two_d(f) for f in (a, b)):
            continue
        plain, turned = (b.shape[0], a.shape[1]), (a.shape[1], b.shape[0])
        if plain != turned and tensors[target].shape in (plain, turned):
            seen.add(tensors[target].shape == turned)
    return seen.pop() if len(seen) == 1 else None


def two_d(info: TensorInfo | None) -> bool:
    return info is not None and info.shape is not None and len(info.shape) == 2


def fan_in_fan_out_note(configured: bool, flipped: list[str]) -> str:
    kind, turn, delta = (("nn.Linear, W stored (out, in)", "off", "B@A") if configured
                         else ("transformers' Conv1D, W stored (in, out)", "on", "(B@A)ᵀ"))
    return (f"fan_in_fan_out is {str(configured).lower()} in {CONFIG}, but {plural(len(flipped), 'module')} "
            f"are {kind} ({listed(flipped)}): PEFT turns it {turn} for those, so ΔW = scaling · {delta} there "
            "(told by W's shape against the factors'; a square W by the adapter's other modules, or its name)")


def all_zero(raw: np.ndarray, dtype: str) -> bool:
    """Whether every value of a float tensor's bytes is ±0: every bit but the sign bit is clear."""
    width = ITEMSIZE[dtype]
    unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    return not np.any(raw.view(unsigned) & unsigned((1 << (8 * width - 1)) - 1))


def zero_alarms(modules: dict[str, LoraModule], roles: dict[str, str], readers: dict[str, TensorSource]) -> list[str]:
    """Modules whose lora_B (or lora_A) is all zero change nothing. PEFT starts B at zero, so an
    adapter saved before training, or whose B never received a gradient, looks like this.
    Reads the factors' bytes only."""
    inert: dict[str, str] = {}
    for name, module in modules.items():
        for slot, info in (("B", module.lora_b), ("A", module.lora_a)):
            try:
                if all_zero(readers[info.file].raw(info), info.dtype):
                    roles[name] += f"; ALARM lora_{slot} is all zero, so ΔW = 0"
                    inert[name] = slot
                    break
            except TensorUnreadable:  # the pair's own read reports it
                break
    if not inert:
        return []
    if len(inert) == len(modules):
        which = "lora_B is" if set(inert.values()) == {"B"} else "lora_B or lora_A is"
        return [f"ALARM: {which} all zero in every module ({len(modules)}): "
                "the adapter is untrained and changes nothing"]
    return [f"ΔW is zero (lora_B or lora_A all zero) in {len(inert)} of {plural(len(modules), 'module')}: "
            f"{listed(list(inert))}"]


def summary_notes(base: Checkpoint | None, config: LoraConfig | None, given: GivenScaling | None, path: str,
                  modules: dict, parsed: Parsed, roles: dict[str, str], extras: bool) -> list[str]:
    """What the user should know about how the adapter was read."""
    over = f" over A ({base.path})" if base is not None else " (a full PEFT-wrapped state dict)"
    computed = f"{plural(len(modules), 'tensor')} computed as W + ΔW in float32, on demand"
    if config is None and given is None:
        notes = [f"ALARM: no {CONFIG} beside {path}: the LoRA scaling is unknown, so ΔW is not applied: "
                 f"{plural(len(parsed.factors), 'adapted module')} compared as W; --lora-alpha or --lora-scaling "
                 "gives the scaling"]
    elif config is None:
        notes = [f"LoRA adapter{over}: no {CONFIG}; {given}, as given; {computed}"]
    else:
        scaling = "lora_alpha/√r (rsLoRA)" if config.use_rslora else "lora_alpha/r"
        patterns = ", with rank_pattern/alpha_pattern" if config.rank_pattern or config.alpha_pattern else ""
        notes = [f"LoRA adapter{over}: r={config.r}, lora_alpha={config.alpha:g}, scaling {scaling}{patterns}; "
                 f"{computed}"]
        notes += [f"unsupported: {what}" for what in config.unsupported]
        notes += list(config.cautions)
        if given is not None:
            notes.append(f"the {given} given is not used: {CONFIG} gives the scaling")
    replaced = sum(1 for role in roles.values() if role.startswith("replaced whole"))
    if replaced:
        notes.append(f"{plural(replaced, 'tensor')} replaced whole by the adapter")
    if len(parsed.adapters) > 1:
        notes.append(f"{len(parsed.adapters)} adapters in one state dict ({listed(sorted(parsed.adapters))}); "
                     f"'{parsed.chosen}' is applied")
    if extras:
        notes.append("the adapter's factors are shown beside their modules, as tensors only this side has")
    return notes


def plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f", … ({len(names) - LISTED} more)" if len(names) > LISTED else "")
