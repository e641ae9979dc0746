r"""Affine layers whose weights and biases share one flat parameter (the base of MLP and MADE)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfkit._checks import shown

__all__ = ["PackedLayers"]

Layer = tuple[Tensor, Tensor]


class PackedLayers(nn.Module):
    r"""Layers ``h ↦ h (W_l ⊙ M_l)ᵀ + b_l`` stored in one flat parameter ``theta``.

    One tensor for the optimizer instead of two per layer (Adam's per-tensor overhead dominates
    small networks on CPU), and, with masks, one mask product per pass instead of one per layer.
    :meth:`layers` forms every ``(W_l ⊙ M_l, b_l)`` with one product and one ``split``; callers
    that run the network several times with the same weights (an autoregressive inverse) pass
    them back in to skip even that.

    Args:
        shapes: ``(out, in)`` of each layer, first to last.
        masks: Optional fixed ``{0, 1}`` masks of those shapes (a buffer, kept as a flat vector).
        zero: Per layer, start with zero weights and bias (else PyTorch's ``nn.Linear`` init,
            ``U(±1/√in)``).
        activation: Activation class, applied between layers. ReLU runs in place on each fresh
            pre-activation (its backward needs only its output), which saves a buffer per layer.

    When the first mask keeps only a contiguous span of at most 3/4 of the input columns (a MADE
    narrower than its input: hidden degrees stop at the width, so later-ranked inputs reach no
    hidden unit), the first layer reads only that span, a strided view of input and weight: the
    same sums without the zero products (synth256 MAF, ``D = 256``, hidden 128: ``log_prob``
    −7%, training step −6%). Skipping fewer columns does not pay for the slices' backward
    (digits MAF, 63 of 64 columns: +2% per step). The span follows the mask, also after
    ``load_state_dict``.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        *,
        masks: Sequence[Tensor] | None = None,
        zero: Sequence[bool] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.shapes = tuple((int(o), int(i)) for o, i in shapes)
        if not self.shapes or any(o < 1 or i < 1 for o, i in self.shapes):
            raise ValueError(
                f"PackedLayers: need layer shapes (out, in) >= 1, got {shown(shapes)}"
            )
        self.split_sizes = tuple(n for o, i in self.shapes for n in (o * i, o))
        zero = [False] * len(self.shapes) if zero is None else list(zero)
        if len(zero) != len(self.shapes):
            raise ValueError(f"PackedLayers: {len(self.shapes)} layers but {len(zero)} zero flags")
        if masks is not None and [tuple(m.shape) for m in masks] != list(self.shapes):
            raise ValueError(
                f"PackedLayers: mask shapes {[tuple(m.shape) for m in masks]} do not match the "
                f"layer shapes {list(self.shapes)}"
            )
        values = []
        for (o, i), z in zip(self.shapes, zero):
            bound = 0.0 if z else 1 / math.sqrt(i)
            values += [torch.empty(o * i).uniform_(-bound, bound)]
            values += [torch.empty(o).uniform_(-bound, bound)]
        theta = torch.cat(values)
        if masks is not None:
            keep = torch.cat([t for m in masks for t in (m.flatten().float(), torch.ones(len(m)))])
            theta = theta * keep
            self.register_buffer("mask", keep)
        else:
            self.register_buffer("mask", None)
        self.theta = nn.Parameter(theta)
        if isinstance(activation, nn.Module) or not callable(activation):
            raise TypeError(
                f"{type(self).__name__}: activation must be a module class such as nn.ReLU (one "
                f"made per network), got {shown(activation)}"
            )
        self.act = activation()
        self._relu = isinstance(self.act, nn.ReLU)
        self._set_input_span()

    def _set_input_span(self) -> None:
        """``input_span = (a, b)``: the first layer's live input columns, when they are
        contiguous and at most 3/4 of them; else None (every column is read)."""
        self.input_span: tuple[int, int] | None = None
        if self.mask is None:
            return
        out, inp = self.shapes[0]
        live = torch.nonzero(self.mask[: out * inp].view(out, inp).any(0)).flatten().tolist()
        if live and 4 * len(live) <= 3 * inp and live[-1] - live[0] + 1 == len(live):
            self.input_span = (live[0], live[-1] + 1)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._set_input_span()  # the loaded mask may keep other columns

    def _cut(self, flat: Tensor) -> list[Layer]:
        parts = flat.split(self.split_sizes)
        return [(parts[2 * k].view(s), parts[2 * k + 1]) for k, s in enumerate(self.shapes)]

    def parameter_views(self) -> list[Layer]:
        """The raw ``(W_l, b_l)`` as views of ``theta`` (unmasked), e.g. for custom initialization."""
        return self._cut(self.theta)

    @torch.no_grad()
    def set_output_bias(self, per_group: Tensor) -> None:
        """Set the output layer's bias to ``per_group`` ``(P,)`` repeated over the output's
        groups of ``P`` units (one group per transformed feature: outputs are group-major)."""
        bias = self.parameter_views()[-1][1]
        bias.view(-1, per_group.numel()).copy_(per_group.reshape(-1))

    def layers(self) -> list[Layer]:
        """``[(W_l ⊙ M_l, b_l)]`` for every layer, from one mask product and one split."""
        return self._cut(self.theta if self.mask is None else self.theta * self.mask)

    def activate(self, h: Tensor, inplace: bool = True) -> Tensor:
        """The activation; ReLU in place when ``inplace`` (``h`` must not be needed elsewhere)."""
        return torch.relu_(h) if inplace and self._relu else self.act(h)

    def first(self, h: Tensor, layer: Layer) -> Tensor:
        """The first layer ``h W_1ᵀ + b_1``, reading only :attr:`input_span` when there is one."""
        w, b = layer
        if self.input_span is not None:
            start, stop = self.input_span
            return F.linear(h[..., start:stop], w[:, start:stop], b)
        return F.linear(h, w, b)

    def chain(self, h: Tensor, layers: Sequence[Layer]) -> Tensor:
        """``L_n ∘ act ∘ … ∘ act ∘ L_1 (h)``: ``layers`` are this network's, from the first (as
        :meth:`layers` returns them, possibly without the last)."""
        h = self.first(h, layers[0])
        for w, b in layers[1:]:
            h = F.linear(self.activate(h), w, b)
        return h

    def residual_chain(self, h: Tensor, layers: Sequence[Layer]) -> Tensor:
        """``L_1``, then residual blocks ``h + L_b(act(L_a(act(h))))`` over the following pairs
        of layers (He et al. 2016's pre-activation form; the second layer of each block starts
        at zero, so each block starts as the identity): the activated last hidden state, the
        input of an output layer that the caller applies. ``layers``: the first layer and the
        blocks' pairs (without the output layer)."""
        h = self.first(h, layers[0])
        for (w1, b1), (w2, b2) in zip(layers[1::2], layers[2::2]):
            u = F.linear(self.activate(h, inplace=False), w1, b1)  # h is reused below
            h = h + F.linear(self.activate(u), w2, b2)
        return self.activate(h)

    def extra_repr(self) -> str:
        return "layers=" + ", ".join(f"{i}→{o}" for o, i in self.shapes)
