"""torchtune LoRA adapters (`adapter_0.pt`, or `adapter_model.pt` / `.safetensors` with torchtune's
keys) read as the tuned weights they stand for, against a Hugging Face base.

torchtune names modules its own way (`layers.N.attn.q_proj`, `attn.output_proj`, `mlp.w1/w2/w3`,
`output`) and keeps q and k in Meta's RoPE row order, so the B factors of q_proj / k_proj have their
rows reordered back (`rope.py`, as torchtune's `tune_to_peft_adapter_weights` does) for the LLaMA
family. ΔW = lora_alpha / r · B @ A (torchtune's LoRALinear), r and lora_alpha from the
adapter_config.json torchtune writes beside the weights (PEFT's format). `.pt` files are only opened
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from spectui.checkpoint.files import CheckpointError, TensorStore, read_json
from spectui.checkpoint.lowrank import LowRankDelta, LowRankModel
from spectui.checkpoint.rope import check_rows, head_counts, unpermute_rows
from spectui.validate import integer, number

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
_EPOCH_FILE = re.compile(r"^adapter_(\d+)\.pt$")
_TUNE_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)\.weight$")
_PEFT_KEY = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.|$)")
# torchtune module paths → Hugging Face's (torchtune's convert_weights._FROM_HF, read backwards)
_TO_HF = [
    (re.compile(r"^layers\.(\d+)\.attn\.(q_proj|k_proj|v_proj)$"), r"model.layers.\1.self_attn.\2"),
    (re.compile(r"^layers\.(\d+)\.attn\.output_proj$"), r"model.layers.\1.self_attn.o_proj"),
    (re.compile(r"^layers\.(\d+)\.mlp\.w1$"), r"model.layers.\1.mlp.gate_proj"),
    (re.compile(r"^layers\.(\d+)\.mlp\.w3$"), r"model.layers.\1.mlp.up_proj"),
    (re.compile(r"^layers\.(\d+)\.mlp\.w2$"), r"model.layers.\1.mlp.down_proj"),
    (re.compile(r"^output$"), "lm_head"),
]
# Base model types whose q/k torchtune's checkpointer converts with `_permute` (hf_to_tune), and
# those it converts without.
ROPE_PERMUTED = {"llama", "mistral", "gemma"}
NOT_PERMUTED = {"qwen2", "qwen3", "phi3"}


def hf_module(module: str) -> str:
    """A torchtune module path in Hugging Face's spelling (unknown paths are kept as they are)."""
    for pattern, replacement in _TO_HF:
        if pattern.match(module):
            return pattern.sub(replacement, module)
    return module


def torchtune_weights(path: Path) -> Path | None:
    """The torchtune-keyed adapter file a path names (a file, or a directory holding one); None when
    it is not one, or when a PEFT-keyed adapter file is there too (PEFT's own reader takes those)."""
    if path.is_file():
        candidates = [path] if path.name.startswith("adapter") and path.suffix in (".pt", ".bin", ".safetensors") \
            else []
    elif path.is_dir():
        candidates = [path / name for name in ADAPTER_FILES if (path / name).is_file()]
        candidates += sorted((p for p in path.glob("adapter_*.pt") if _EPOCH_FILE.match(p.name)),
                             key=lambda p: int(_EPOCH_FILE.match(p.name)[1]))
    else:
        return None
    tune = []
    for file in candidates:
        keys = TensorStore(file, [file], {}).names()
        if any(_PEFT_KEY.search(k) for k in keys):
            return None
        if any(_TUNE_KEY.match(k) for k in keys):
            tune.append(file)
    if len(tune) > 1 and not any(f.name.startswith("adapter_model") for f in tune):
        shown = ", ".join(f.name for f in tune[:3])
        raise CheckpointError(path, f"holds torchtune adapters of several epochs ({shown}); name the file to compare")
    return tune[0] if tune else None


def open_torchtune_adapter(path: Path, base: TensorStore) -> LowRankModel | None:
    """A torchtune LoRA adapter applied to `base`; None when the path is not one."""
    file = torchtune_weights(path)
    if file is None:
        return None
    config_file = file.parent / ADAPTER_CONFIG
    if not config_file.is_file():
        raise CheckpointError(file, "is a torchtune LoRA adapter with no adapter_config.json beside it, so its "
                                    "scale lora_alpha / r is unknown; write one with the recipe's \"r\" and "
                                    "\"lora_alpha\"")
    config = read_json(config_file)
    r = integer(config.get("r"), config_file, "r", minimum=1, error=CheckpointError)
    alpha = number(config.get("lora_alpha"), config_file, "lora_alpha", error=CheckpointError)
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise CheckpointError(config_file, f"sets {flag}; spectui reads torchtune's plain LoRA adapters only")
    store = TensorStore(file, [file], {})
    parts: dict[str, dict[str, str]] = {}
    warnings = []
    for key in store.names():
        match = _TUNE_KEY.match(key)
        if match:
            parts.setdefault(match["module"], {})[match["part"]] = key
        elif key.endswith(".magnitude"):
            raise CheckpointError(file, f"holds {key[:80]!r}, a DoRA magnitude; spectui reads torchtune's plain "
                                        "LoRA adapters only")
        else:
            warnings.append(f"{file}: holds {key[:80]!r}, which is not a LoRA factor; it is ignored")
    model_type = str(base.config.get("model_type", ""))
    permuted = model_type in ROPE_PERMUTED
    if model_type not in ROPE_PERMUTED | NOT_PERMUTED and any(re.search(r"\.attn\.[qk]_proj$", m) for m in parts):
        warnings.append(f"{file}: the base's model type {model_type or '(unknown)'!r} is not one whose q/k rows "
                        "torchtune is known to reorder; its q_proj / k_proj factors are used as stored")
    deltas = {}
    for module, found in parts.items():
        if set(found) != {"lora_a", "lora_b"}:
            raise CheckpointError(file, f"has only one of the two LoRA factors for {module}")
        a_shape, b_shape = store.shape(found["lora_a"]), store.shape(found["lora_b"])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1] or a_shape[0] != r:
            raise CheckpointError(file, f"LoRA factors for {module} (B {_fmt(b_shape)}, A {_fmt(a_shape)}) do not "
                                        f"have the rank r={r} that {ADAPTER_CONFIG} gives")
        name = hf_module(module)
        heads = None
        if permuted and re.search(r"\.self_attn\.[qk]_proj$", name):
            q_heads, kv_heads = head_counts(base.config, base.path)
            heads = q_heads if name.endswith("q_proj") else kv_heads
            check_rows(b_shape[0], heads, file, found["lora_b"])
        deltas[f"{name}.weight"] = LowRankDelta(module=module, b_shape=tuple(b_shape), a_shape=tuple(a_shape),
                                                scaling=alpha / r,
                                                factors=_reader(store, found["lora_b"], found["lora_a"], heads))
    if not deltas:
        raise CheckpointError(file, "holds no LoRA factor pair")
    return LowRankModel(base, file if path.is_file() else path, deltas, f"torchtune LoRA r={r} α={alpha:g}", warnings)


def _reader(store: TensorStore, b_key: str, a_key: str, heads: int | None):
    def factors():
        b, a = store.load(b_key).float(), store.load(a_key).float()
        return (unpermute_rows(b, heads) if heads else b), a

    return factors


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
