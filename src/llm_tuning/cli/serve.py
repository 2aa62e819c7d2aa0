"""chat, serve: talking to what was trained."""

from __future__ import annotations


def chat(cfg):
    from ..infer import load_for_inference
    from ..infer.chat import run_chat
    from ..infer.sampling import Sampling

    model, tok, info = load_for_inference(cfg.model, cfg.adapter, cfg.precision, cfg.trust_remote_code,
                                          cfg.quantization)
    template = cfg.template or info.get("template") or "default"
    sampling = Sampling.from_config(cfg)
    run_chat(model, tok, template, sampling, cfg.system)


def serve(cfg):
    from ..infer.serve import serve as run_server

    run_server(cfg)
