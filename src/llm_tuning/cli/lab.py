"""estimate, compare: the laboratory's commands."""

from __future__ import annotations


def estimate(cfg) -> int:
    from .estimate import print_estimate

    return print_estimate(cfg)


def compare(cfg):
    from ..lab.compare import run_compare

    run_compare(cfg.config, cfg.force, output_dir=cfg.output_dir)
