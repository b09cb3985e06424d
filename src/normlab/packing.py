"""A setting's seeds as one model: S seeds packed as S groups of channels.

Every layer of the packed model keeps the seeds apart by construction:

- a linear layer becomes :class:`PackedLinear`, one matrix per seed (a batched matmul, never a
  dense block-diagonal one, so a non-finite value in one seed's block meets no other's);
- a convolution takes ``groups = S`` times its own groups;
- a norm layer is the same normlab layer built over ``S * C`` channels (the run's own norm
  factory), so every per-channel statistic, buffer and compiled step stays per seed and every
  built-in mode is exact unchanged; group and layer norm take S times their groups;
- seeds of different norms (a setting's modes, packed together) come in groups, one per norm,
  side by side in the pack: each norm position is then a :class:`SplitNorm`, whose part ``g``
  is group ``g``'s norm layer widened over that group's seeds.

Activations are laid out ``(B, S * C, ...)``: seed ``s``'s batch is channel group ``s``, so the
built-in models' forwards (flatten, pooling, residual sums, ReLU) run unchanged. Each seed's
model is built as an ordinary run builds it, from its own seed; :class:`Pack` copies its tensors
into its slice (:meth:`Pack.load_seed`) and back (:meth:`Pack.store_seed`), optimizer state
included, so a seed's checkpoint is the one its unpacked run would write.

A model or mode from outside the package (``_target_``) may mix channels in its forward:
:func:`unpackable_reason` says why such a run trains one seed per process.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from normlab import extension as compiled
from normlab.config.validation import build_checked_model, run_data_set
from normlab.models import forward_activations
from normlab.norms import RunningStatsNorm, is_batch_dependent, is_batch_independent
from normlab.norms.diagnostics import NormDiagnostics

NormFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class NormGroup:
    """``seeds`` seeds side by side in a pack, all normalized by ``norm``'s layers."""

    norm: NormFactory
    seeds: int


@dataclass(frozen=True)
class Slot:
    """Where a packed tensor (or module) comes from: ``name`` in each seed's own model, stacked
    over the ``seeds`` seeds from place ``first`` in the pack."""

    name: str
    first: int
    seeds: int

    @property
    def places(self) -> range:
        """The places in the pack of the seeds it stacks."""
        return range(self.first, self.first + self.seeds)

    def holds(self, seed: int) -> bool:
        return seed in self.places


def oversized_reason(run: Any, device: torch.device) -> str | None:
    """Why ``run``'s cell, which could pack, trains one seed per process: on CPU a pack streams
    every seed's activations through memory layer after layer, so past
    ``run.pack_max_activations`` values in one seed's forward (batch size times
    :func:`activations_per_example`) packing loses to one seed per process
    (``docs/benchmarks.md``). None where it packs."""
    limit = run.pack_max_activations
    if device.type != "cpu" or limit == 0:
        return None
    values = run.batch_size * activations_per_example(run)
    if values <= limit:
        return None
    return (
        f"model={run.model.name} at batch_size={run.batch_size} holds {values:,} activations a "
        f"seed-step on CPU, over pack_max_activations={limit:,}"
    )


# In the studies' 25-seed packs a packed step's cost grew with the batch size as about
# 1 + batch * activations an example / this, for the MLPs and cnn1d alike (docs/benchmarks.md).
ACTIVATIONS_PER_BATCH_1_STEP = 20_000


def relative_step_cost(run: Any) -> float:
    """What a step of ``run``'s cell costs against one at batch 1: the launcher's reckoning of
    how long a pack trains."""
    return 1 + run.batch_size * activations_per_example(run) / ACTIVATIONS_PER_BATCH_1_STEP


def activations_per_example(run: Any) -> int:
    """The values every leaf module of ``run``'s model outputs for one example in a forward
    (built and run on the meta device: nothing allocated or computed). Counted once per model
    and data config: a sweep asks for every job of a setting."""
    key = json.dumps([asdict(run.model), asdict(run.data)], sort_keys=True, default=str)
    if key not in _ACTIVATIONS:
        _ACTIVATIONS[key] = _count_activations(run)
    return _ACTIVATIONS[key]


_ACTIVATIONS: dict[str, int] = {}


def _count_activations(run: Any) -> int:
    data_set = run_data_set(run)
    with torch.device("meta"):
        model = build_checked_model(run, data_set.input_shape, data_set.num_classes, _no_norm)
        return forward_activations(model, torch.empty(2, *data_set.input_shape)) // 2


def _no_norm(channels: int) -> nn.Module:
    return nn.Identity()


def unpackable_reason(run: Any) -> str | None:
    """Why the seeds of ``run``'s cell cannot share one packed model, or None if they can."""
    if run.model._target_ is not None:
        return f"model={run.model.name} comes from outside normlab ({run.model._target_})"
    if run.norm.target is not None:
        return f"norm={run.norm.mode} comes from outside normlab ({run.norm.target})"
    if run.distributed.world_size > 1:
        return f"distributed.world_size={run.distributed.world_size}: one run spans its ranks"
    return None


class PackedLinear(nn.Module):
    """S independent linear layers on ``(B, S * in_features)``: seed ``s`` maps its group of
    inputs with its own ``weight[s * out:(s + 1) * out]`` (a plain ``weight`` parameter of shape
    ``(S * out, in)``, the seeds' weights stacked, so a per-row parametrization applies)."""

    def __init__(self, seeds: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.seeds, self.in_features, self.out_features = seeds, in_features, out_features
        self.weight = nn.Parameter(torch.empty(seeds * out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(seeds * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if compiled.serves(x) and not torch.compiler.is_compiling():
            return compiled.entries().packed_linear(x, self.weight, self.bias, self.seeds)
        return _PackedLinearFunction.apply(x, self.weight, self.bias, self.seeds)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"seeds={self.seeds}, in={self.in_features}, out={self.out_features}, bias={bias}"


class _PackedLinearFunction(torch.autograd.Function):
    """Every seed's ``x_s @ W_s.T + b_s`` and its gradients as batched matmuls over the seeds,
    each product in the operand layout ATen's CPU ``bmm`` runs fast at small batches: the
    transposed-weight product autograd would derive for the input's gradient takes a slow path
    there (43 us against 4 us at batch 1, five 128 x 128 seeds; ``docs/benchmarks.md``).
    The weight's gradient comes out in the parameter's own ``(S * out, in)`` layout. On CPU the
    compiled ``normlab::packed_linear`` (``csrc/packed_linear.cpp``) runs the same products
    without this class's Python (17-20 us a layer); this is the path elsewhere."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, seeds: int) -> Tensor:
        batch = x.shape[0]
        inputs = x.view(batch, seeds, -1).transpose(0, 1)
        weights = weight.view(seeds, -1, weight.shape[1])
        if bias is None:
            out = torch.bmm(inputs, weights.transpose(1, 2))
        else:
            out = torch.baddbmm(bias.view(seeds, 1, -1), inputs, weights.transpose(1, 2))
        ctx.save_for_backward(x, weight)
        ctx.seeds, ctx.has_bias = seeds, bias is not None
        # (B, S * out) rows: the compiled norm steps take whole rows
        return out.transpose(0, 1).reshape(batch, -1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        batch, seeds = x.shape[0], ctx.seeds
        grads = grad.reshape(batch, seeds, -1).transpose(0, 1)
        inputs = x.view(batch, seeds, -1).transpose(0, 1)
        weights = weight.view(seeds, -1, weight.shape[1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grads, weights).transpose(0, 1).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            columns = grads.transpose(1, 2)
            # at batch 1 an outer product: the same single products, without bmm's call cost
            grad_weight = columns * inputs if batch == 1 else torch.bmm(columns, inputs)
            grad_weight = grad_weight.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grads.sum(1).reshape(-1)
        return grad_x, grad_weight, grad_bias, None


class ConvolutionBackend:
    """A context in which a packed step of ``model`` runs ATen's own convolutions where oneDNN's
    cost more: at batch 1 on CPU, when every convolution is 1-D (oneDNN's grouped 1-D
    convolutions take 1.6-2x as long there for the MNIST-1D CNN's layers; at batch 2 the two are
    even, and its 2-D ones are faster from the MNIST CNN's second layer on). Forward and
    backward both choose their kernel inside it; elsewhere it changes nothing."""

    def __init__(self, model: nn.Module, batch_size: int, device: torch.device) -> None:
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        one_d = bool(convs) and all(isinstance(m, nn.Conv1d) for m in convs)
        self.aten = one_d and batch_size == 1 and device.type == "cpu"
        self._onednn = torch.backends.mkldnn.enabled

    def __enter__(self) -> None:
        if self.aten:
            self._onednn = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc) -> None:
        if self.aten:
            torch.backends.mkldnn.enabled = self._onednn


class PackedDiagnostics(NormDiagnostics):
    """A packed norm layer's diagnostics: the layer records its ``S * C`` channels as usual, and
    each fold hands every seed its own channels' records (``seeds[s]``, that seed's
    unpacked layer's diagnostics, which its record then reads as an unpacked run would)."""

    def __init__(self, seeds: list[NormDiagnostics]) -> None:
        first = seeds[0]
        super().__init__(len(seeds) * first.num_features, first.clip_fields)
        self.seeds = seeds

    @torch.no_grad()
    def _fold(self) -> None:
        if not self._pending:
            return
        raw = self._buffer[: self._pending]
        per_seed = raw.view(*raw.shape[:2], len(self.seeds), -1)
        for index, diagnostics in enumerate(self.seeds):
            diagnostics.add_steps(per_seed[:, :, index].contiguous(), self._pending_eps)
        self._pending = 0


def pack_model(models: Sequence[nn.Module], groups: Sequence[NormGroup]) -> nn.Module:
    """One model holding ``models`` (the same architecture, one per seed, the seeds of each of
    ``groups`` in turn) side by side; its tensors start as copies of theirs
    (:meth:`Pack.load_seed`)."""
    if sum(g.seeds for g in groups) != len(models):
        raise ValueError(f"{len(models)} models for groups of {[g.seeds for g in groups]} seeds")
    firsts = [sum(g.seeds for g in groups[:i]) for i in range(len(groups))]
    packed = copy.deepcopy(models[0])
    _widen(packed, [models[i] for i in firsts], groups)
    return packed


def _is_norm_position(layer: nn.Module) -> bool:
    """A layer a run's norm factory builds (what differs between the groups of a pack)."""
    return is_batch_dependent(layer) or is_batch_independent(layer)


def _widen(module: nn.Module, firsts: list[nn.Module], groups: Sequence[NormGroup]) -> None:
    """Widen ``module`` (a copy of the first group's model) in place; ``firsts``: each group's
    first model, at the same place."""
    seeds = sum(g.seeds for g in groups)
    for name, child in list(module.named_children()):
        layers = [getattr(first, name) for first in firsts]
        if len(groups) > 1 and _is_norm_position(child):
            wide = SplitNorm(
                [_wide_norm(layer, group) for layer, group in zip(layers, groups, strict=True)],
                [g.seeds for g in groups],
            )
        else:
            _same_layer(name, layers)
            wide = _wide_layer(child, seeds, groups[0].norm)
        if wide is None:
            _widen(child, layers, groups)
            continue
        _carry_parametrizations(child, wide)
        setattr(module, name, wide)


def _same_layer(name: str, layers: list[nn.Module]) -> None:
    kinds = {type(layer).__name__ for layer in layers}
    if len(kinds) > 1:
        raise ValueError(f"the groups' models differ at {name} ({sorted(kinds)}), not in a norm")


def _wide_norm(layer: nn.Module, group: NormGroup) -> nn.Module:
    wide = _wide_layer(layer, group.seeds, group.norm)
    return copy.deepcopy(layer) if wide is None else wide


def _carry_parametrizations(layer: nn.Module, wide: nn.Module) -> None:
    if parametrize.is_parametrized(layer):
        for tensor_name, chain in layer.parametrizations.items():
            for parametrization in chain:
                parametrize.register_parametrization(
                    wide, tensor_name, copy.deepcopy(parametrization)
                )


class SplitNorm(nn.Module):
    """A norm position of a pack whose seeds differ in norm: ``parts[g]`` normalizes the
    channels of the ``seeds[g]`` seeds of group ``g`` (consecutive groups of channels)."""

    def __init__(self, parts: Sequence[nn.Module], seeds: Sequence[int]) -> None:
        super().__init__()
        self.parts, self.seeds = nn.ModuleList(parts), list(seeds)

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[1] // sum(self.seeds)
        chunks = x.split([n * width for n in self.seeds], dim=1)
        # contiguous: the compiled norm steps take whole rows, not a view across the others'
        return torch.cat([p(c.contiguous()) for p, c in zip(self.parts, chunks, strict=True)], 1)

    def extra_repr(self) -> str:
        return f"seeds={self.seeds}"


def _wide_layer(layer: nn.Module, seeds: int, norm: NormFactory) -> nn.Module | None:
    """The packed counterpart of one layer, or None for a container (widened inside) or a
    layer without per-seed state (ReLU, identity)."""
    if isinstance(layer, nn.Linear):
        return PackedLinear(seeds, layer.in_features, layer.out_features, layer.bias is not None)
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        # the plain class: a parametrized layer's type is a subclass made for that one instance
        conv = nn.Conv1d if isinstance(layer, nn.Conv1d) else nn.Conv2d
        return conv(
            seeds * layer.in_channels,
            seeds * layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=seeds * layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if isinstance(layer, nn.GroupNorm):
        wide = copy.deepcopy(layer)
        wide.num_groups, wide.num_channels = seeds * layer.num_groups, seeds * layer.num_channels
        if layer.affine:
            wide.weight = nn.Parameter(layer.weight.detach().repeat(seeds))
            wide.bias = nn.Parameter(layer.bias.detach().repeat(seeds))
        return wide
    if isinstance(layer, RunningStatsNorm):
        wide = norm(seeds * layer.num_features)
        if type(wide) is not type(layer):
            raise TypeError(f"the norm factory built {type(wide).__name__}, not {type(layer)}")
        wide.compiled_step = layer.compiled_step
        return wide
    return None


def seed_dim(packed: Tensor, unpacked: Tensor, seeds: int) -> int | None:
    """The dim along which ``packed`` stacks the seeds' ``unpacked`` tensors, or None for a
    tensor the seeds share (a step counter)."""
    if packed.shape == unpacked.shape:
        return None
    for dim, (wide, narrow) in enumerate(zip(packed.shape, unpacked.shape, strict=True)):
        if wide == seeds * narrow and packed.shape[dim + 1 :] == unpacked.shape[dim + 1 :]:
            return dim
    raise ValueError(f"{tuple(packed.shape)} does not stack {seeds} of {tuple(unpacked.shape)}")


_PART = re.compile(r"\.parts\.(\d+)(?=\.|$)")


class Pack:
    """A packed model and its seeds' unpacked models, tensor by tensor: what moves a seed's
    parameters, gradients, buffers and optimizer state into its slice and back."""

    def __init__(self, packed: nn.Module, models: Sequence[nn.Module]) -> None:
        self.model, self.models, self.seeds = packed, list(models), len(models)
        self.splits = {n: m for n, m in packed.named_modules() if isinstance(m, SplitNorm)}
        self.params = dict(packed.named_parameters())
        self.buffers = dict(packed.named_buffers())
        self.seed_params = [dict(m.named_parameters()) for m in self.models]
        self.seed_buffers = [dict(m.named_buffers()) for m in self.models]
        self.param_slots = {name: self.slot(name) for name in self.params}
        for name, param in self.params.items():
            slot = self.param_slots[name]
            # one seed (the last one running) is its own stack
            own = self.seed_params[slot.first][slot.name]
            if slot.seeds > 1 and seed_dim(param, own, slot.seeds) != 0:
                raise ValueError(f"parameter {name} does not stack its seeds along dim 0")
        self.buffer_slots = {name: self.slot(name) for name in self.buffers}
        self.buffer_dims = {}
        for name, buffer in self.buffers.items():
            slot = self.buffer_slots[name]
            own = self.seed_buffers[slot.first][slot.name]
            self.buffer_dims[name] = seed_dim(buffer, own, slot.seeds)
        self._diagnostics()

    def slot(self, name: str) -> Slot:
        """Where the packed tensor or module ``name`` comes from: under a :class:`SplitNorm`,
        part ``g``'s seeds, and the name without ``.parts.g``; elsewhere every seed's."""
        match = _PART.search(name)
        split = self.splits.get(name[: match.start()]) if match else None
        if split is None:
            return Slot(name, 0, self.seeds)
        part = int(match.group(1))
        own = name[: match.start()] + name[match.end() :]
        return Slot(own, sum(split.seeds[:part]), split.seeds[part])

    def _diagnostics(self) -> None:
        layers = [dict(m.named_modules()) for m in self.models]
        for name, layer in self.model.named_modules():
            if isinstance(layer, RunningStatsNorm):
                slot = self.slot(name)
                seeds = [layers[s][slot.name].diagnostics for s in slot.places]
                layer.diagnostics = PackedDiagnostics(seeds)
                layer.diagnostics.compiled = layer.compiled_step

    @staticmethod
    def seed_slice(tensor: Tensor, slot: Slot, dim: int | None, seed: int) -> Tensor:
        if dim is None:
            return tensor
        return tensor.chunk(slot.seeds, dim)[seed - slot.first]

    @torch.no_grad()
    def load_seed(self, seed: int) -> None:
        """Seed ``seed``'s parameters, gradients and buffers into its slice (the buffers its
        group shares, a step counter, from the group's first seed)."""
        for name, param in self.params.items():
            slot = self.param_slots[name]
            if not slot.holds(seed):
                continue
            own = self.seed_params[seed][slot.name]
            self.seed_slice(param, slot, 0, seed).copy_(own)
            if own.grad is not None:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                self.seed_slice(param.grad, slot, 0, seed).copy_(own.grad)
        for name, buffer in self.buffers.items():
            slot, dim = self.buffer_slots[name], self.buffer_dims[name]
            if slot.holds(seed) and (dim is not None or seed == slot.first):
                own = self.seed_buffers[seed][slot.name]
                self.seed_slice(buffer, slot, dim, seed).copy_(own)

    @torch.no_grad()
    def store_seed(self, seed: int) -> None:
        """Seed ``seed``'s slice of every parameter, gradient and buffer into its own model."""
        for name, param in self.params.items():
            slot = self.param_slots[name]
            if not slot.holds(seed):
                continue
            own = self.seed_params[seed][slot.name]
            own.copy_(self.seed_slice(param, slot, 0, seed))
            grad = param.grad
            own.grad = None if grad is None else self.seed_slice(grad, slot, 0, seed).clone()
        for name, buffer in self.buffers.items():
            slot = self.buffer_slots[name]
            if slot.holds(seed):
                own = self.seed_buffers[seed][slot.name]
                own.copy_(self.seed_slice(buffer, slot, self.buffer_dims[name], seed))

    # ------------------------------------------------------------------ optimizer state

    def _seed_param_names(self, seed: int) -> dict[int, str]:
        return {id(p): name for name, p in self.seed_params[seed].items()}

    @torch.no_grad()
    def load_optimizer(
        self, packed: torch.optim.Optimizer, seeds: Sequence[torch.optim.Optimizer]
    ) -> None:
        """The packed optimizer's state from every seed's (a resumed run's), slice by slice;
        state the seeds share (a step count) from the first of each tensor's seeds."""
        names = [self._seed_param_names(s) for s in range(self.seeds)]
        states = [
            {names[s][id(p)]: state for p, state in optimizer.state.items()}
            for s, optimizer in enumerate(seeds)
        ]
        for name, param in self.params.items():
            slot = self.param_slots[name]
            per_seed = [states[s].get(slot.name) for s in slot.places]
            if any(state is None for state in per_seed):
                continue
            packed.state[param] = {
                key: _stack(param, [state[key] for state in per_seed]) for key in per_seed[0]
            }

    @torch.no_grad()
    def store_optimizer(
        self, packed: torch.optim.Optimizer, seed: int, optimizer: torch.optim.Optimizer
    ) -> None:
        """Seed ``seed``'s slice of the packed optimizer's state into its own optimizer."""
        for name, param in self.params.items():
            slot = self.param_slots[name]
            if not slot.holds(seed):
                continue
            state = packed.state.get(param)
            own = self.seed_params[seed][slot.name]
            if not state:
                optimizer.state.pop(own, None)
                continue
            optimizer.state[own] = {
                key: self.seed_slice(value, slot, 0, seed).clone()
                if isinstance(value, Tensor) and value.shape == param.shape
                else _copy(value)
                for key, value in state.items()
            }

    def per_seed_norms(self, tensors: Sequence[Tensor], slots: Sequence[Slot]) -> Tensor:
        """The Euclidean norm of each seed's slices of ``tensors`` (each stacking the seeds
        of its slot along dim 0; zero for the seeds it does not hold)."""
        rows = []
        for tensor, slot in zip(tensors, slots, strict=True):
            row = torch.linalg.vector_norm(tensor.detach().reshape(slot.seeds, -1), dim=1)
            if slot.seeds != self.seeds:
                row = F.pad(row, (slot.first, self.seeds - slot.first - slot.seeds))
            rows.append(row)
        return torch.stack(rows).norm(dim=0)


def _stack(param: Tensor, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, Tensor) and first.dim() and first.shape[0] * len(values) == len(param):
        return torch.cat(values)
    return _copy(first)


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
