"""quantlab: the quantisation lab's command (weights, activations and outliers, end-to-end losses, report)."""

from __future__ import annotations


def run(cfg):
    import json

    from ..lab.quantlab import run_quantlab

    result = run_quantlab(cfg, log=(lambda m: None) if cfg.json else print)
    if cfg.json:
        print(json.dumps(result["json"], indent=2))
