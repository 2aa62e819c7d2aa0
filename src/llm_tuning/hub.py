"""Is the Hugging Face hub reachable? Asked before a hub name is loaded, so that a name meant as a local file (a
typo, `--data zh_sample`) or a machine without network fails at once, instead of after the libraries' retries
(~24 s for a dataset name offline)."""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

_ANSWER: dict = {}


def offline_by_choice() -> bool:
    """HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) set: the libraries read their cache only, and fail fast."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _probe(host: str, port: int, answer: dict):
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
        answer["reason"] = ""
    except OSError as e:  # name resolution, refused, timed out
        answer["reason"] = f"{host}:{port} is unreachable ({e.strerror or type(e).__name__})"


def unreachable() -> str:
    """'' when the hub ($HF_ENDPOINT, default huggingface.co) takes a connection within 2 s; else why not, for an
    error message. Asked once per process; a thread bounds a name lookup that hangs."""
    if "reason" not in _ANSWER:
        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = url.port or (80 if url.scheme == "http" else 443)
        answer: dict = {}
        t = threading.Thread(target=_probe, args=(url.hostname or "", port, answer), daemon=True)
        t.start()
        t.join(3)
        _ANSWER["reason"] = answer.get("reason", f"{url.hostname}: no answer within 3 s")
    return _ANSWER["reason"]


def check_reachable(name: str, what: str, local_advice: str):
    """A UserError at once when `name` can only come from the hub and the hub cannot be reached (unless the
    user chose offline mode, where the libraries answer from their cache without waiting)."""
    from .errors import UserError

    if offline_by_choice():
        return
    reason = unreachable()
    if reason:
        raise UserError(f"{name}: no such {what} here, and as a hub name it cannot be fetched: the hub {reason}. "
                        f"{local_advice}; or set HF_HUB_OFFLINE=1 to use a copy in the hub cache")
