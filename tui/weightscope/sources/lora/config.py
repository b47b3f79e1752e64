"""`adapter_config.json`: how a PEFT LoRA adapter forms ΔW, read and checked like any input.

PEFT's scaling per module is lora_alpha / r, or lora_alpha / √r with `use_rslora`, where r
and lora_alpha come from `rank_pattern` / `alpha_pattern` when a pattern matches the
module's name, as PEFT's `get_pattern_key` matches: the first key `k` in file order for which
`(.*\\.)?(k)$` matches the whole name. Switches for variants whose merged weight is not
W + ΔW are collected by name, so they are reported, never silently ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from weightscope.sources.errors import CheckpointError, one_line
from weightscope.sources.files import read_json

CONFIG = "adapter_config.json"
MAX_CONFIG = 1 << 20
MAX_PATTERN = 1000  # characters of a rank_pattern/alpha_pattern key: they are regexes from a file

# Switches whose merged weight is not W + scaling · B@A: no module is computed.
UNSUPPORTED = {"use_dora": "DoRA (use_dora)", "use_qalora": "QALoRA (use_qalora)", "use_bdlora": "BD-LoRA (use_bdlora)"}
# Switches that leave W + ΔW right where it applies, but change what the adapter touches.
PARTLY_SUPPORTED = {
    "layer_replication": "layer_replication is not supported: modules of replicated layers match no base tensor",
    "target_parameters": "target_parameters (LoRA on parameters) is not supported: those factors match no base tensor",
    "trainable_token_indices": "trainable tokens are not supported: their deltas are shown as stored, not applied",
    "alora_invocation_tokens": "aLoRA: ΔW applies only after the invocation tokens; W + ΔW shows it always applied",
    "lora_bias": "lora_bias is not supported: a bias that lora_B adds to is marked unreadable",
}
# Initialisations that rewrite the base: ΔW then belongs to the rewritten (residual) base.
REWRITES_BASE = ("pissa", "olora", "corda", "lora_ga")


@dataclass(frozen=True)
class LoraConfig:
    """What `adapter_config.json` says about how ΔW is formed.

    Attributes:
        unsupported: variants the config switches on whose merged weight is not W + ΔW.
        cautions: what else the user should know (partly supported switches, the base it was trained on).
    """

    peft_type: str
    r: int
    alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    modules_to_save: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    cautions: tuple[str, ...] = ()

    def rank(self, module: str) -> int:
        """r for a module named as in the base model (`model.layers.0.self_attn.q_proj`)."""
        return pattern_value(self.rank_pattern, module, self.r)

    def alpha_for(self, module: str) -> float:
        return pattern_value(self.alpha_pattern, module, self.alpha)

    def scaling(self, module: str) -> float:
        """PEFT's `scaling[adapter]` for a module."""
        r = self.rank(module)
        return self.alpha_for(module) / (math.sqrt(r) if self.use_rslora else r)

    def saves(self, module: str) -> bool:
        """Whether `modules_to_save` names this module (PEFT matches the name's last parts)."""
        return any(module == m or module.endswith(f".{m}") for m in self.modules_to_save)


@dataclass(frozen=True)
class GivenScaling:
    """The scaling the user gives (`--lora-alpha A` or `--lora-scaling S`) for an adapter saved
    without adapter_config.json: scaling = A / r, with r each module's rank from its factors,
    or S for every module.

    Raises:
        ValueError: neither or both given, or a value that is not a finite number.
    """

    alpha: float | None = None
    scaling: float | None = None

    def __post_init__(self):
        if (self.alpha is None) == (self.scaling is None):
            raise ValueError("give either a LoRA alpha or a LoRA scaling")
        if not math.isfinite(self.alpha if self.alpha is not None else self.scaling):
            raise ValueError("the LoRA alpha or scaling must be a finite number")

    def config(self, r: int) -> LoraConfig:
        """The config that gives a module of rank `r` this scaling."""
        return LoraConfig("LORA", r, self.alpha if self.alpha is not None else self.scaling * r)

    def __str__(self) -> str:
        return f"lora_alpha {self.alpha:g} (scaling alpha/r)" if self.alpha is not None else f"scaling {self.scaling:g}"


def pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_config(path: str) -> LoraConfig:
    """adapter_config.json, checked field by field: no booleans for numbers
    (docs/reading-untrusted-files.md, rule 3).

    Raises:
        CheckpointError: unreadable, not JSON, or a field of the wrong type.
    """
    raw = read_json(path, MAX_CONFIG)
    if not isinstance(raw, dict):
        raise CheckpointError(path, "not a JSON object")

    def get(key: str, kinds: tuple[type, ...], default):
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CheckpointError(path, f"{key} is {one_line(repr(value), 60)}, not {kinds[0].__name__}")
        return value

    def patterns(key: str, kinds: tuple[type, ...]) -> dict:
        table = get(key, (dict,), {})
        for k, v in table.items():
            if len(k) > MAX_PATTERN or not isinstance(v, kinds) or isinstance(v, bool) or v <= 0:
                raise CheckpointError(path, f"{key} entry {one_line(k, 60)!r}: {one_line(repr(v), 40)}")
            try:
                re.compile(k)
            except re.error as exc:
                raise CheckpointError(path, f"{key} entry {one_line(k, 60)!r} is not a regex: {exc}") from None
        return table

    r = get("r", (int,), 8)
    if r <= 0:
        raise CheckpointError(path, f"r is {r}; a LoRA rank must be positive")
    saved = get("modules_to_save", (list,), [])
    if not all(isinstance(m, str) for m in saved):
        raise CheckpointError(path, "modules_to_save must be a list of names")
    cautions = [why for key, why in PARTLY_SUPPORTED.items() if raw.get(key)]
    init = raw.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(REWRITES_BASE):
        cautions.append(f"init_lora_weights={one_line(init, 40)} rewrites the base at initialisation: ΔW applies "
                        "to that residual base, not to the original model, unless the adapter was converted")
    base_model = raw.get("base_model_name_or_path")
    if isinstance(base_model, str) and base_model:
        cautions.append(f"adapter trained on {one_line(base_model, 120)}")
    return LoraConfig(
        peft_type=get("peft_type", (str,), "LORA"), r=r, alpha=float(get("lora_alpha", (int, float), 8)),
        use_rslora=get("use_rslora", (bool,), False), fan_in_fan_out=get("fan_in_fan_out", (bool,), False),
        rank_pattern=patterns("rank_pattern", (int,)),
        alpha_pattern={k: float(v) for k, v in patterns("alpha_pattern", (int, float)).items()},
        modules_to_save=tuple(saved), unsupported=tuple(what for key, what in UNSUPPORTED.items() if raw.get(key)),
        cautions=tuple(cautions))
