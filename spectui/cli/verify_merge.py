"""`spectui verify-merge BASE ADAPTER MERGED`: is a merged checkpoint BASE + ΔW, as the adapter
defines it?

spectui's own exact merge of the adapter into BASE (the one every scan uses) is the reference. Each
tensor of MERGED is compared with it in float64, within the rounding of MERGED's dtype: at most
TOLERANCE_ULPS machine epsilons of that dtype times the tensor's largest |W| (a merge computed and
stored in bf16 is about one such ulp off). A matrix that differs gets the simple mistake that
explains it, when one does: α/r not applied, rsLoRA's α/√r mixed up with α/r, merged twice, ΔW
subtracted, a module left unmerged. Exit codes: 0 every tensor matches, 1 some differ (one line
each on stderr), 2 bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TOLERANCE_ULPS = 2.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify-merge", help="check that a merged model is BASE + the adapter's ΔW, within rounding",
        description="Check a merged checkpoint against BASE + ΔW of ADAPTER (spectui's exact merge), tensor by "
        "tensor, within the rounding of MERGED's dtype; name the likely mistake where one differs.",
    )
    parser.add_argument("base", type=Path, metavar="BASE", help="the base checkpoint the adapter was trained on")
    parser.add_argument("adapter", type=Path, metavar="ADAPTER",
                        help="the adapter: PEFT, torchtune or GGUF LoRA")
    parser.add_argument("merged", type=Path, metavar="MERGED", help="the merged checkpoint to check")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class TensorCheck:
    """One tensor of the merge: how far MERGED is from BASE + ΔW, against the rounding allowed."""

    name: str
    adapted: bool  # the adapter changes it (otherwise MERGED must equal BASE)
    dtype: str
    error: float  # max |MERGED − (BASE + ΔW)|
    tolerance: float
    hint: str = ""  # for one that differs: the mistake that explains it, or what is known

    @property
    def ok(self) -> bool:
        return not self.hint and self.error <= self.tolerance


def run(args) -> int:
    import sys

    from spectui.checkpoint.names import short_name

    checks, missing = verify_merge(args.base, args.adapter, args.merged)
    _print_table(checks, missing)
    bad = [c for c in checks if not c.ok]
    for check in bad:
        print(f"spectui: verify-merge: {short_name(check.name)}: {check.hint}", file=sys.stderr)
    return 1 if bad else 0


def verify_merge(base_path: Path, adapter_path: Path, merged_path: Path) -> tuple[list[TensorCheck], list[str]]:
    """Every tensor of MERGED checked against BASE + ΔW; also the base tensors MERGED lacks that the
    adapter does not change (a tied lm_head left out, for instance), which are not errors."""
    from spectui.checkpoint.adapters import is_adapter_dir
    from spectui.checkpoint.comparison import open_model, open_store
    from spectui.checkpoint.files import CheckpointError, locate
    from spectui.checkpoint.names import normalise

    base_path, adapter_path, merged_path = locate(str(base_path)), locate(str(adapter_path)), locate(str(merged_path))
    for path, role in ((base_path, "BASE"), (merged_path, "MERGED")):
        if is_adapter_dir(path):
            raise CheckpointError(path, f"is a PEFT adapter; {role} must be a full checkpoint")
    base = open_store(base_path)
    source = open_model(adapter_path, base)
    if not source.is_adapter:
        raise CheckpointError(adapter_path, "is a full checkpoint, not an adapter; give the adapter second")
    merged = open_store(merged_path)
    if getattr(merged, "quantized", False):
        raise CheckpointError(merged_path, f"is {merged.description}: quantization moves every weight by more than "
                                           "rounding, so a merge cannot be checked against it")
    merged_names = {normalise(n): n for n in merged.names()}
    checks, missing = [], []
    for name in source.names():
        adapted = source.changes(name)
        merged_name = merged_names.get(normalise(name))
        if merged_name is None:
            if adapted:
                checks.append(TensorCheck(name, True, "-", math.inf, 0.0, "missing from MERGED"))
            else:
                missing.append(name)
            continue
        expected_shape, got_shape = tuple(source.shape(name)), tuple(merged.shape(merged_name))
        if expected_shape != got_shape:
            checks.append(TensorCheck(name, adapted, "-", math.inf, 0.0,
                                      f"shape {_fmt(got_shape)} in MERGED, {_fmt(expected_shape)} expected"))
            continue
        checks.append(_check(name, adapted, source, base, merged.load(merged_name)))
    return checks, missing


def _check(name: str, adapted: bool, source, base, got: torch.Tensor) -> TensorCheck:
    import torch

    expected = source.load(name)
    dtype = str(got.dtype).removeprefix("torch.")
    if not (got.is_floating_point() and expected.is_floating_point()):
        same = torch.equal(got, expected.to(got.dtype))
        return TensorCheck(name, adapted, dtype, 0.0 if same else math.inf, 0.0,
                           "" if same else "differs from the base, though the adapter does not change it")
    got64, expected64 = got.double(), expected.double()
    if not torch.isfinite(got64).all():
        return TensorCheck(name, adapted, dtype, math.inf, 0.0, "holds NaN or infinite values")
    tolerance = TOLERANCE_ULPS * torch.finfo(got.dtype).eps * float(expected64.abs().max()) if got.numel() else 0.0
    error = float((got64 - expected64).abs().max()) if got.numel() else 0.0
    if error <= tolerance:
        return TensorCheck(name, adapted, dtype, error, tolerance)
    if not adapted:
        hint = "differs from the base, though the adapter does not change it"
    else:
        hint = _diagnose(got64, base.load(name).double(), expected64, tolerance, _scaling(source, name))
    return TensorCheck(name, adapted, dtype, error, tolerance, hint)


def _diagnose(got, w0, expected, tolerance: float, scaling) -> str:
    """The simple mistake that explains MERGED = W0 + c·ΔW, from the least-squares c."""
    import torch

    delta, moved = expected - w0, got - w0

    def fits(c: float) -> bool:
        return float((moved - c * delta).abs().max()) <= tolerance

    if float(moved.abs().max()) <= tolerance:
        return "left unmerged: MERGED equals BASE"
    norm = float(torch.sum(delta * delta))
    if norm == 0.0:
        return f"differs by up to {float((got - expected).abs().max()):.3g}, where the adapter's ΔW is zero"
    c = float(torch.sum(moved * delta)) / norm
    known = []
    if scaling is not None:
        s, r, rslora = scaling
        if s:
            known.append((1 / s, "α/r not applied: MERGED = BASE + B·A" if not rslora
                          else "α/√r not applied: MERGED = BASE + B·A"))
            if rslora:
                known.append((1 / math.sqrt(r), "α/r used, but the adapter is rsLoRA (α/√r)"))
            else:
                known.append((math.sqrt(r), "rsLoRA's α/√r used, but the adapter is plain LoRA (α/r)"))
    known += [(2.0, "merged twice: MERGED = BASE + 2·ΔW"), (-1.0, "ΔW subtracted: MERGED = BASE − ΔW")]
    for value, hint in known:
        if abs(c - value) <= 1e-3 * max(1.0, abs(value)) and fits(value):
            return hint
    if fits(c):
        return f"MERGED − BASE is {c:.4g} × the adapter's ΔW: a wrong scaling"
    worst = float((got - expected).abs().max())
    return f"differs from BASE + ΔW by up to {worst:.3g} ({worst / tolerance:.3g}× the rounding allowed), " \
           "and not by a rescaled ΔW"


def _scaling(source, name: str) -> tuple[float, int, bool] | None:
    """(scaling, r, rsLoRA) of the adapter's module for `name`, where the adapter kind says."""
    from spectui.checkpoint.names import normalise

    deltas = getattr(source, "deltas", None)  # GGUF and torchtune LoRA
    if isinstance(deltas, dict) and name in deltas:
        return deltas[name].scaling, deltas[name].rank, False
    adapter = source.refittable() if hasattr(source, "refittable") else None
    modules = getattr(adapter, "modules", None)  # PEFT LoRA
    settings = getattr(adapter, "settings", None)
    if not isinstance(modules, dict):
        return None
    module = next((m for n, m in modules.items() if normalise(n) == normalise(name)), None)
    if module is None or not hasattr(module, "scaling") or not hasattr(module, "rank"):
        return None
    return module.scaling, module.rank, bool(getattr(settings, "use_rslora", False))


def _print_table(checks: list[TensorCheck], missing: list[str]) -> None:
    from rich.table import Table

    from spectui.checkpoint.names import short_name
    from spectui.cli.options import stdout_console

    adapted = [c for c in checks if c.adapted]
    others = [c for c in checks if not c.adapted]
    table = Table(title="MERGED against BASE + ΔW", title_justify="left")
    for column, justify in (("matrix", "left"), ("dtype", "left"), ("max |error|", "right"),
                            ("allowed", "right"), ("verdict", "left")):
        table.add_column(column, justify=justify)
    for check in adapted + [c for c in others if not c.ok]:
        verdict = "ok" if check.ok else f"DIFFERS: {check.hint}"
        table.add_row(short_name(check.name), check.dtype, _num(check.error), _num(check.tolerance), verdict)
    out = stdout_console()
    out.print(table)
    matched = sum(c.ok for c in adapted)
    line = f"{matched} of {len(adapted)} adapted tensors match; {sum(c.ok for c in others)} of {len(others)} " \
           "others equal the base"
    if missing:
        line += f"; {len(missing)} base tensors the adapter leaves alone are not in MERGED ({short_name(missing[0])}"
        line += ", …)" if len(missing) > 1 else ")"
    out.print(line, highlight=False)


def _num(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:.3g}"


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
