"""fusedrnn.convert(model) and fusedrnn.to_torch(model): torch.nn's recurrent modules swapped for
the fused ones inside any model, and back.

A swap changes the module's class and nothing else: the same object keeps its parameters (so an
optimizer built before still holds them), buffers, device, dtype, training mode, hooks and every
other attribute, and the round trip is bitwise identical. Subclasses that keep torch.nn's forward
are swapped to a class deriving from both (their own methods stay); subclasses that override
forward compute something of their own and are left alone.
"""
from __future__ import annotations

import copy
import dataclasses
import logging

from torch import nn

from . import modules

__all__ = ["convert", "to_torch", "torch_twin", "Swap"]

_log = logging.getLogger("fusedrnn")

# torch.nn class -> fused drop-in.
_FUSED_OF = {nn.RNN: modules.RNN, nn.GRU: modules.GRU, nn.LSTM: modules.LSTM,
             nn.RNNCell: modules.RNNCell, nn.GRUCell: modules.GRUCell,
             nn.LSTMCell: modules.LSTMCell}
_TORCH_OF = {fused: torch_cls for torch_cls, fused in _FUSED_OF.items()}

# A class made for a subclass keeps the class it was made from here, so the swap back restores it.
_ORIGIN = "_fusedrnn_swapped_from"
_derived: dict[tuple[type, type], type] = {}


@dataclasses.dataclass(frozen=True)
class Swap:
    """One module convert/to_torch looked at: its qualified name in the model ('' for the model
    itself), its class before and after (the same when left alone), and why if left alone."""
    name: str
    before: type
    after: type
    reason: str = ""

    @property
    def swapped(self) -> bool:
        return self.before is not self.after

    def __str__(self) -> str:
        where = self.name or "(model)"
        if self.swapped:
            return f"{where}: {_qualname(self.before)} -> {_qualname(self.after)}"
        return f"{where}: {_qualname(self.before)} kept ({self.reason})"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _base_in(cls: type, table: dict[type, type]) -> type | None:
    """The first class of cls's MRO that is a key of table."""
    return next((base for base in cls.__mro__ if base in table), None)


def _target_class(cls: type, table: dict[type, type]) -> tuple[type | None, str]:
    """(class to swap cls to, reason when None)."""
    targets = set(table.values())
    base = next((c for c in cls.__mro__ if c in table or c in targets), None)
    if base is None or base in targets:  # not recurrent, or already on the target side
        return None, ""
    if cls is base:
        return table[base], ""
    origin = cls.__dict__.get(_ORIGIN)
    if origin is not None and _base_in(origin, table) is None:
        return origin, ""  # made by the swap the other way: back to the class it came from
    if cls.forward is not base.forward:
        return None, f"{cls.__qualname__} overrides forward"
    key = (cls, table[base])
    if key not in _derived:
        # The target's forward first, then the subclass's own methods.
        _derived[key] = type(cls.__name__, (table[base], cls),
                             {_ORIGIN: cls, "__module__": cls.__module__,
                              "__qualname__": cls.__qualname__})
    return _derived[key], ""


def _swap_all(model: nn.Module, table: dict[type, type], inplace: bool,
              verbose: bool) -> tuple[nn.Module, list[Swap]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = []
    for name, module in model.named_modules(remove_duplicate=True):
        before = type(module)
        after, reason = _target_class(before, table)
        if after is None:
            if reason:
                report.append(Swap(name, before, before, reason))
            continue
        module.__class__ = after
        if table is _TORCH_OF and isinstance(module, nn.RNNBase):
            module.flatten_parameters()  # cuDNN's single weight buffer (no-op on the CPU)
        report.append(Swap(name, before, after))
    for swap in report:
        _log.info("%s", swap)
        if verbose:
            print(swap)
    return model, report


def convert(model: nn.Module, inplace: bool = False, verbose: bool = False,
            return_report: bool = False):
    """Swap every torch.nn RNN/GRU/LSTM/RNNCell/GRUCell/LSTMCell in model (the model itself
    included) for fusedrnn's drop-in. A copy unless inplace. Each swap is logged to the 'fusedrnn'
    logger (and printed if verbose); with return_report, returns (model, [Swap, ...])."""
    model, report = _swap_all(model, _FUSED_OF, inplace, verbose)
    return (model, report) if return_report else model


def to_torch(model: nn.Module, inplace: bool = False, verbose: bool = False,
             return_report: bool = False):
    """The reverse of convert: every fusedrnn module in model back to its torch.nn class (or the
    subclass convert found)."""
    model, report = _swap_all(model, _TORCH_OF, inplace, verbose)
    return (model, report) if return_report else model


def torch_twin(module: nn.Module) -> nn.Module:
    """A torch.nn module of a fused module's class (or the subclass it was converted from)
    holding the very same parameters and hooks: what torch.jit.script compiles in its place."""
    twin = copy.copy(module)  # shares the attributes; the dicts below are copied, not their values
    for dict_name in ("_parameters", "_buffers", "_modules"):
        setattr(twin, dict_name, dict(getattr(module, dict_name)))
    after, _ = _target_class(type(module), _TORCH_OF)
    twin.__class__ = after
    return twin
