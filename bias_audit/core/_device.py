"""Device choice: the CPU unless CUDA is asked for (and then it must be there)."""

from __future__ import annotations

import torch

from bias_audit.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"cpu" -> CPU; "cuda"/"cuda:N" -> that GPU, or ConfigError if there is none;
    "auto" -> CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for, but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return dev
