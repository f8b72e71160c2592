"""Fail fast without a network: is the Hugging Face hub worth asking at all?

huggingface_hub retries a download for half a minute before it gives up, so a machine without
internet waited ~30 s for the useful message. Offline means HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE)
is set, or the hub's host does not accept a connection within PROBE_SECONDS.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

PROBE_SECONDS = 2.0


def offline_by_env() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline(timeout: float = PROBE_SECONDS) -> bool:
    if offline_by_env():
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return not _reachable(url.hostname or "huggingface.co", port, timeout)
