"""Complexity of a model: parameters, MACs (total, per pixel, per submodule) and run time.

MACs are counted with ``fvcore.nn.FlopCountAnalysis``. fvcore counts one fused multiply-add
as one "flop", so its numbers are MACs (multiply-accumulates), not 2x-MAC FLOPs. It counts
convolutions, linear layers, matmuls/einsums and normalizations; element-wise ops (ReLU, add,
...) are ignored, and ops it has no rule for are listed in ``report["unsupported_ops"]`` so
a reader knows what is missing. The model is traced with TorchScript, so ``inputs`` must be
tensors (or tuples of tensors) that ``model(*inputs)`` accepts.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

__all__ = ["ModuleComplexity", "complexity_report", "format_complexity", "MAC_CONVENTION"]

MAC_CONVENTION = "fvcore FlopCountAnalysis: one fused multiply-add = 1 MAC"
TOTAL = "total"


@dataclass
class ModuleComplexity:
    """Complexity of one (sub)module; ``name`` is its dotted path, or ``"total"``."""

    name: str
    params: int
    macs: int
    macs_per_pixel: float
    trainable_params: int = 0

    @property
    def frozen_params(self) -> int:
        return self.params - self.trainable_params


def _param_counts(module: nn.Module):
    params = list(module.parameters())  # parameters() de-duplicates shared tensors
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _resolve(model: nn.Module, submodules: Optional[Sequence[str]]) -> Dict[str, nn.Module]:
    if submodules is None:
        return dict(model.named_children())
    named = dict(model.named_modules())
    unknown = [s for s in submodules if s not in named or s == ""]
    if unknown:
        available = sorted(n for n in named if n)
        raise ValueError(f"unknown submodule name(s) {unknown}; available: {available}")
    return {s: named[s] for s in submodules}


def _time_ms(model: nn.Module, inputs: tuple, runs: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            model(*inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(*inputs)
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def complexity_report(model: nn.Module, inputs: tuple, *, num_pixels: int,
                      submodules: Optional[Sequence[str]] = None, time_runs: int = 3,
                      warmup: int = 1, eval_mode: bool = True) -> Dict[str, Any]:
    """Measure ``model`` on ``inputs``.

    Args:
        inputs: positional arguments of ``model`` (a tuple of tensors).
        num_pixels: pixels the inputs represent (e.g. frames x H x W), for MACs/pixel.
        submodules: dotted submodule names to report (default: the direct children).
        time_runs: timed calls; the median is reported. 0 skips timing.
        warmup: untimed calls before timing.
        eval_mode: measure in eval mode (the training flags are restored afterwards).

    Returns:
        ``{"total": ModuleComplexity, "modules": [ModuleComplexity, ...], "num_pixels",
        "ms_per_call" (None if not timed), "time_runs", "unsupported_ops": {op: count},
        "mac_convention"}``; ``total.trainable_params``/``frozen_params`` split the parameters.
    """
    from fvcore.nn import FlopCountAnalysis  # heavy import, only needed here

    if not isinstance(inputs, tuple):
        raise ValueError(f"inputs must be a tuple of model arguments, got {type(inputs).__name__}")
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be > 0, got {num_pixels}")
    if time_runs < 0 or warmup < 0:
        raise ValueError(f"time_runs and warmup must be >= 0, got {time_runs}, {warmup}")
    selected = _resolve(model, submodules)

    was_training = {m: m.training for m in model.modules()}
    if eval_mode:
        model.eval()
    try:
        flops = FlopCountAnalysis(model, inputs)
        flops.unsupported_ops_warnings(False)
        flops.uncalled_modules_warnings(False)
        total_macs = int(flops.total())
        by_module = flops.by_module()
        unsupported = dict(flops.unsupported_ops())
        ms = _time_ms(model, inputs, time_runs, warmup) if time_runs > 0 else None
    finally:
        for m, flag in was_training.items():
            m.training = flag

    def entry(name: str, module: nn.Module, macs: int) -> ModuleComplexity:
        params, trainable = _param_counts(module)
        return ModuleComplexity(name=name, params=params, macs=macs,
                                macs_per_pixel=macs / num_pixels, trainable_params=trainable)

    return {
        "total": entry(TOTAL, model, total_macs),
        "modules": [entry(n, m, int(by_module.get(n, 0))) for n, m in selected.items()],
        "num_pixels": int(num_pixels),
        "ms_per_call": ms,
        "time_runs": time_runs,
        "unsupported_ops": unsupported,
        "mac_convention": MAC_CONVENTION,
    }


def _si(value: float) -> str:
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.4g}"


def format_complexity(report: Dict[str, Any]) -> str:
    """Markdown table of a ``complexity_report`` result."""
    lines = ["| module | params | trainable | frozen | MACs | MACs/pixel |",
             "|---|---|---|---|---|---|"]
    for m in list(report["modules"]) + [report["total"]]:
        lines.append(f"| {m.name} | {_si(m.params)} | {_si(m.trainable_params)} | "
                     f"{_si(m.frozen_params)} | {_si(m.macs)} | {_si(m.macs_per_pixel)} |")
    lines += ["", f"MACs: {report['mac_convention']}; {report['num_pixels']} pixels."]
    if report["ms_per_call"] is not None:
        lines.append(f"Time: {report['ms_per_call']:.2f} ms per call "
                     f"(median of {report['time_runs']} runs, no_grad).")
    if report["unsupported_ops"]:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(report["unsupported_ops"].items()))
        lines.append(f"Not counted (no fvcore rule): {ops}.")
    return "\n".join(lines) + "\n"
