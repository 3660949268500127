"""The only place that reaches the Hugging Face hub; offline it fails fast and says what to pass."""

import os
import socket

HUB_HOST = ("huggingface.co", 443)
OFFLINE_ENV = ("SAT_EHFT_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class HubUnavailable(RuntimeError):
    """Raised instead of a long download time-out when the hub cannot be reached."""


def offline_switch():
    """The environment switch that forbids downloads, as "NAME=value is set", or None."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]} is set"
    return None


def offline_reason(timeout=3.0):
    """Why the hub can't be used now, or None when it can (an env switch, else a quick TCP probe)."""
    if offline_switch():
        return offline_switch()
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
    except OSError as err:
        return f"{HUB_HOST[0]} is unreachable ({err})"
    return None


def require_hub(what, instead):
    """Raise HubUnavailable naming `what` was asked for and `instead` (the local alternative)."""
    reason = offline_reason()
    if reason:
        raise HubUnavailable(f"cannot fetch {what} from the Hugging Face hub: {reason}. {instead}")


def download_model(name):
    """Download an HF model repository (config, weights, tokenizer) and return its local folder."""
    require_hub(f"model '{name}'", "Pass a local folder instead: a Hugging Face checkpoint folder "
                "(config.json + model.safetensors or pytorch_model.bin) or a SAT checkpoint folder.")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    folder = snapshot_download(name, allow_patterns=patterns)
    if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
        folder = snapshot_download(name, allow_patterns=patterns + ["pytorch_model.bin"])
    return folder


def sat_zoo_folder(name):
    """Resolve `name` through SAT's model zoo (downloads into $SAT_HOME), failing fast offline."""
    from sat.resources.urls import MODEL_URLS

    if name not in MODEL_URLS:
        raise ValueError(f"'{name}' is not in SAT's model zoo; known: {', '.join(sorted(MODEL_URLS))}")
    if offline_switch():
        raise HubUnavailable(f"cannot fetch '{name}' from SAT's model zoo: {offline_switch()}. "
                             "Pass a local SAT or Hugging Face checkpoint folder instead.")
    from sat.resources import auto_create

    return auto_create(name)
