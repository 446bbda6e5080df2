"""The capture context: eval mode, frozen parameters, hooks; everything undone on exit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bias_audit.core.maps._guided import Rule, ruled_relu


@dataclass
class Capture:
    """What the hooks saw during the pass.

    ``activations[layer]`` is a hooked layer's output (its last call) as a private tensor: the
    model continues with a copy of it, so an in-place op after the layer cannot change it. In
    the default mode an output that records no graph (the first hooked layer to run: the
    parameters are frozen) becomes a detached leaf with ``requires_grad=True`` (the graph starts
    there) and the later hooked layers stay connected to it, so one ``autograd.grad`` reaches
    them all; with ``record_input`` every activation stays
    connected to the input (guided methods need the gradient down to the pixels).
    """

    record_input: bool
    enabled: bool = True
    activations: dict[nn.Module, Tensor] = field(default_factory=dict)
    # What a layer returned when it was not a tensor (a tuple, a dict ...): it was called.
    other_outputs: dict[nn.Module, object] = field(default_factory=dict)
    rule: Rule = field(default_factory=Rule)
    handles: list[RemovableHandle] = field(default_factory=list)

    def add_hook(self, module: nn.Module, hook: Callable[..., object]) -> None:
        """A forward hook that lives as long as the capture."""
        self.handles.append(module.register_forward_hook(hook))

    def hook_layer(self, layer: nn.Module) -> None:
        """Save the output of ``layer`` (its last call) as ``activations[layer]``."""
        self.add_hook(layer, self._on_layer)

    def _on_layer(self, module: nn.Module, _args: object, output: object) -> object:
        if not self.enabled:
            return None
        if not isinstance(output, Tensor):
            self.other_outputs[module] = output
            return None
        if self.record_input or output.requires_grad:
            act = output.clone()  # connected to the input or to an earlier hooked layer
        else:
            act = output.detach().clone().requires_grad_(True)
        self.activations[module] = act
        # The model goes on with a copy: an in-place op downstream must not touch `act`
        # (and may not touch a leaf that requires grad at all).
        return act.clone()


@contextmanager
def capture(model: nn.Module, *, guided: bool = False) -> Iterator[Capture]:
    """Prepare ``model`` for one explain pass and restore it afterwards, also on error.

    Inside: every module in eval mode, every parameter with ``requires_grad=False`` and, if
    ``guided``, a forward hook on every ``nn.ReLU`` (made out-of-place so the hook sees the
    pre-activation). ``Capture.hook_layer`` and ``Capture.add_hook`` add hooks that are removed
    with the others. The ``training``, ``requires_grad`` and ``inplace`` flags are restored and
    all hooks removed on exit; exceptions propagate.
    """
    cap = Capture(record_input=guided)
    training = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad) for p in model.parameters()]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if guided else []
    inplace = [(m, m.inplace) for m in relus]

    def on_relu(_module: nn.Module, args: tuple[object, ...], output: object) -> object:
        if not cap.enabled or not args or not isinstance(args[0], Tensor):
            return None
        return ruled_relu(args[0], cap.rule)

    try:
        model.eval()
        for p, _ in params:
            p.requires_grad_(False)
        for m in relus:
            m.inplace = False
        # ReLU hooks first: if the target layer is itself a ReLU, its hook must see the ruled
        # output, or the saved activation would fall off the path to the score.
        for m in relus:
            cap.add_hook(m, on_relu)
        yield cap
    finally:
        for handle in cap.handles:
            handle.remove()
        cap.handles.clear()
        for m, flag in inplace:
            m.inplace = flag
        for p, flag in params:
            p.requires_grad_(flag)
        for module, flag in training:
            module.training = flag
        cap.activations.clear()
        cap.other_outputs.clear()
