"""Target-layer resolution and the token-to-grid reshape for transformers."""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models import SwinTransformer, VisionTransformer

from bias_audit.errors import ConfigError, ModelError

Reshape = Callable[[Tensor], Tensor]

# Pooling layers only resample the layer before them; a map on their output is no finer.
_RESAMPLERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

# model -> {input shape without batch: dotted name}; avoids a probe pass on every call.
_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = (
    weakref.WeakKeyDictionary()
)


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)
    return names


def _vit_grid(model: nn.Module) -> Reshape:
    side = model.image_size // model.patch_size

    def to_grid(tokens: Tensor) -> Tensor:
        # (N, 1 + h*w, D): drop the class token, then lay the patches out on their grid.
        if tokens.ndim != 3 or tokens.shape[1] != 1 + side * side:
            return tokens
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    return to_grid


def _channels_last_grid(out: Tensor) -> Tensor:
    # torchvision Swin keeps (N, h, w, C) until its final permute.
    return out.permute(0, 3, 1, 2) if out.ndim == 4 else out


def _transformer_default(
    model: nn.Module,
) -> tuple[str | None, Reshape | None, str | tuple[str, ...]]:
    """(default layer, automatic reshape, name prefixes it applies to) for ViT/Swin."""

    if isinstance(model, VisionTransformer):
        last = len(model.encoder.layers) - 1
        # The class token only mixes with the patches in attention: the layer must precede
        # the last attention, so the last block's first norm, as is usual for ViT.
        return f"encoder.layers.encoder_layer_{last}.ln_1", _vit_grid(model), "encoder"
    if isinstance(model, SwinTransformer):
        return "norm", _channels_last_grid, ("features", "norm")
    return None, None, ()


def _probe_last_spatial(model: nn.Module, images: Tensor) -> str:
    """Dotted name of the last module whose output is (N, C, h, w), from a one-image pass."""
    names = _module_names(model)
    seen: list[tuple[str, tuple[int, ...], nn.Module]] = []

    def record(module: nn.Module, _args: object, output: object) -> None:
        if isinstance(output, Tensor) and output.ndim == 4:
            seen.append((names[module], tuple(output.shape), module))

    handles = [m.register_forward_hook(record) for m in names]
    # Eval mode for the probe: a training-mode pass would move BatchNorm's running statistics
    # (the trainer resolves its layer on a fresh model in training mode).
    training = [(m, m.training) for m in names]
    try:
        model.eval()
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training:
            m.training = flag
    spatial = [
        name
        for name, shape, module in seen
        if name and shape[2] * shape[3] > 1 and not isinstance(module, _RESAMPLERS)
    ]
    if not spatial:
        spatial = [name for name, _, _ in seen if name]
    if not spatial:
        raise ModelError(
            "target_layer=None: no module of the model gives a spatial (N, C, h, w) output; "
            "pass target_layer= (and reshape= for token outputs)"
        )
    return spatial[-1]


def resolve_target_layer(
    model: nn.Module,
    target_layer: str | nn.Module | None,
    images: Tensor,
    reshape: Reshape | None,
) -> tuple[str, nn.Module, Reshape | None]:
    """Find the target layer and the reshape that turns its output into (N, C, h, w).

    The one layer resolver: :func:`explain` and the trainer's attention penalty both call it,
    so a model is penalised and audited at the same layer. With ``target_layer=None`` it picks
    the ViT/Swin default, or the last module with a spatial (N, C, h, w) output in a one-image
    probe pass (in eval mode, flags restored; adaptive pools skipped: they only resample).

    Returns:
        ``(dotted name, module, reshape or None)``.

    Raises:
        ConfigError: an unknown name or a module not in the model.
        ModelError: ``None`` and no module gives a spatial output.
    """
    names = _module_names(model)
    default, auto_reshape, prefix = _transformer_default(model)

    if target_layer is None:
        if default is not None:
            name = default
        else:
            key = tuple(images.shape[1:])
            cache = _AUTO_CACHE.setdefault(model, {})
            if key not in cache:
                cache[key] = _probe_last_spatial(model, images)
            name = cache[key]
    elif isinstance(target_layer, nn.Module):
        if target_layer not in names:
            raise ConfigError(
                f"target_layer: the module {type(target_layer).__name__} is not part of the model"
            )
        name = names[target_layer]
    elif isinstance(target_layer, str):
        name = target_layer
    else:
        raise ConfigError(
            f"target_layer: expected a module, a dotted name or None, got "
            f"{type(target_layer).__name__}"
        )

    modules = dict(model.named_modules(remove_duplicate=False))
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"target_layer: the model has no layer named {name!r}{hint}")

    if reshape is None and auto_reshape is not None and name.startswith(prefix):
        reshape = auto_reshape
    return name, modules[name], reshape


def to_grid(output: Tensor, reshape: Reshape | None, name: str) -> Tensor:
    """The layer output as (N, C, h, w), or ConfigError naming the layer and its shape."""
    grid = reshape(output) if reshape is not None else output
    if not isinstance(grid, Tensor) or grid.ndim != 4:
        shape = tuple(output.shape)
        raise ConfigError(
            f"target_layer {name!r}: output of shape {shape} is not spatial (N, C, h, w); "
            "pick a convolutional layer or pass reshape="
        )
    return grid


def layer_output(output: object, name: str) -> Tensor:
    """The target layer's output if it is a tensor, else ModelError naming what it is."""
    if isinstance(output, Tensor):
        return output
    kind = type(output).__name__
    raise ModelError(
        f"target_layer {name!r} returns a {kind}, not a tensor; pick a layer whose output is a "
        "tensor or a submodule inside it"
    )
