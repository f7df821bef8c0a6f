"""The Hugging Face Hub when it cannot be reached: fail in seconds, not after minutes of retries.

huggingface_hub retries an unreachable host with back-off (about 30 s per file). Before the
first hub access, loraft tries one TCP connection; if it fails, the Hugging Face libraries are
switched to offline mode, so cached copies still load at once and anything else fails at once
with a hint (`HF_HUB_OFFLINE=1`, a local path, `--data-root`).
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
_switched: list[bool] = []  # set when loraft (not the user) switched the libraries offline


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@functools.cache
def hub_reachable() -> bool:
    """One TCP connection to the hub's host (HF_ENDPOINT), at most once per process."""
    if offline_requested():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def go_offline_unless_reachable() -> None:
    """Switch the Hugging Face libraries to offline mode when the hub cannot be reached."""
    if hub_reachable():
        return
    if not offline_requested():
        _switched.append(True)
    for variable in OFFLINE_VARIABLES:
        os.environ[variable] = "1"
    # The libraries read these variables when imported: set their constants too.
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    if "evaluate" in sys.modules:
        sys.modules["evaluate"].config.HF_EVALUATE_OFFLINE = True


def offline_hint(data: bool = False) -> str:
    """What to add to a failed hub load: why, and what to do instead (`data`: a data file)."""
    if hub_reachable():
        return ""
    if _switched or not offline_requested():
        why = "the Hugging Face Hub cannot be reached; set HF_HUB_OFFLINE=1 to skip the 3 s check"
    else:
        why = "HF_HUB_OFFLINE is set"
    instead = (
        "--data-root DIR for the local files (see data/README.md)"
        if data
        else "a local path instead (--data-root DIR for data files)"
    )
    return f" ({why}; only cached copies load: give {instead})"


def hub_dataset_cached(dataset_id: str) -> bool:
    """Whether a copy of a hub dataset is in the local caches (read without importing datasets)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    return (hub_cache / f"datasets--{dataset_id.replace('/', '--')}").is_dir() or (
        datasets_cache / dataset_id.replace("/", "___")
    ).is_dir()


def is_local(name: str) -> bool:
    """A path on disk (a directory or file that exists), as opposed to a hub id."""
    return os.path.exists(os.path.expanduser(name))
