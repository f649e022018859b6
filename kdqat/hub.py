"""The one Hugging Face hub reachability probe: a TCP connect with a short timeout, so that an
unreachable hub fails a job in seconds instead of after the libraries' retries (DESIGN.md §5)."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def offline() -> bool:
    """True when the environment forbids hub access (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
