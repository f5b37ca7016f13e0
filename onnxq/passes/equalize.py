"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019), exact rewrites only.

For two convolutions ``A → f → B`` where ``f`` is Relu, LeakyRelu or nothing (all positively
homogeneous: ``f(x / s) = f(x) / s`` for ``s > 0``), output channel ``i`` of ``A`` may be
divided by ``s_i`` (its weights and bias) and the matching input channel of ``B`` multiplied
by it: the model computes the same function. With ``s_i = sqrt(r_A,i / r_B,i)`` (``r``: the
largest |weight| of the channel) both ranges become ``sqrt(r_A,i · r_B,i)``. The activation
between them shrinks where ``A``'s channel was large: a tensor whose channel ranges differ by
orders of magnitude (depthwise convs of ImageNet MobileNets) gets one int8 scale that suits
more of its channels. Chains are equalized pair by pair, repeated until the scales settle.

Skipped, by rule: Clip/ReLU6/HardSwish between the convs (not positively homogeneous, so the
rewrite would not be exact), grouped ``B`` other than depthwise, weights shared with another
node, and tensors read by anything else (a graph output included). A bias shared with another
node (converters merge equal constants) is replaced by the node's own copy. No bias absorption: with
per-channel int8 weights and calibrated activation ranges the shifted ranges need none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.pipeline import PassResult

__all__ = ["CrossLayerEqualizationPass"]

_HOMOGENEOUS = ("Relu", "LeakyRelu")
_LIMIT = 1e4  # no channel is scaled by more than this either way


def _weight(node: gs.Node, index: int, shared: bool = False) -> np.ndarray | None:
    """The float32 constant at ``index``; one that other nodes read too only with ``shared``
    (a bias: converters merge equal ones, the zero biases of TFLite's depthwise convs)."""
    t = node.inputs[index] if len(node.inputs) > index else None
    if not isinstance(t, gs.Constant) or (len(t.outputs) != 1 and not shared):
        return None
    value = np.asarray(t.values)
    return value if value.dtype == np.float32 else None


def _only_reader(t: gs.Tensor, outputs: set[str]) -> gs.Node | None:
    readers = list(t.outputs)
    return readers[0] if len(readers) == 1 and t.name not in outputs else None


def _pairs(graph: gs.Graph):
    """(A, B, B is depthwise) for every equalizable pair."""
    outputs = G.graph_output_names(graph)
    for a in graph.nodes:
        if a.op != "Conv" or _weight(a, 1) is None or (len(a.inputs) > 2 and a.inputs[2].name
                                                       and _weight(a, 2, True) is None):
            continue
        nxt = _only_reader(a.outputs[0], outputs)
        if nxt is not None and nxt.op in _HOMOGENEOUS:
            nxt = _only_reader(nxt.outputs[0], outputs)
        wa, wb = _weight(a, 1), (_weight(nxt, 1) if nxt is not None else None)
        if nxt is None or nxt.op != "Conv" or wa is None or wb is None:
            continue
        channels, group = wa.shape[0], int(nxt.attrs.get("group", 1))
        if group == 1 and wb.shape[1] == channels:
            yield a, nxt, False
        elif group == channels and wb.shape[0] == channels and wb.shape[1] == 1:
            yield a, nxt, True


def _set(node: gs.Node, index: int, value: np.ndarray) -> None:
    """A new array for the node's constant (the input model's arrays are never written); a
    constant other nodes read too (a shared bias) is replaced by a copy of the node's own."""
    t = node.inputs[index]
    if len(t.outputs) == 1:
        t.values = value.astype(np.float32)
        return
    node.inputs[index] = gs.Constant(f"{t.name}_{node.name}_equalized", value.astype(np.float32))


@dataclass(frozen=True, slots=True, kw_only=True)
class CrossLayerEqualizationPass:
    iterations: int = 50
    #: a pair moves only when some channel's scale is off by more than this (log); so a
    #: second run of a converged pass changes nothing
    tolerance: float = 1e-3
    name: str = "cross_layer_equalization"

    def run(self, graph: gs.Graph) -> PassResult:
        pairs = list(_pairs(graph))
        changed: set[str] = set()
        for _ in range(self.iterations):
            moved = [a.name for a, b, depthwise in pairs
                     if self._equalize(a, b, depthwise, self.tolerance)]
            changed.update(moved)
            if not moved:
                break
        notes = (f"cross-layer equalization: {len(changed)} conv pair(s) rescaled",)
        return PassResult(graph=graph, modified=bool(changed), notes=notes if changed else ())

    @staticmethod
    def _equalize(a: gs.Node, b: gs.Node, depthwise: bool, tolerance: float) -> bool:
        wa, wb = _weight(a, 1), _weight(b, 1)
        assert wa is not None and wb is not None
        ra = np.abs(wa.reshape(wa.shape[0], -1)).max(axis=1).astype(np.float64)
        in_axis = 0 if depthwise else 1
        rb = np.abs(np.moveaxis(wb, in_axis, 0).reshape(wb.shape[in_axis], -1)).max(axis=1)
        s = np.ones_like(ra)
        ok = (ra > 0) & (rb > 0)
        s[ok] = np.sqrt(ra[ok] / rb[ok].astype(np.float64))
        s = np.clip(s, 1.0 / _LIMIT, _LIMIT)
        if float(np.abs(np.log(s)).max(initial=0.0)) <= tolerance:
            return False
        shape = [-1] + [1] * (wa.ndim - 1)
        _set(a, 1, wa / s.reshape(shape))
        if len(a.inputs) > 2 and a.inputs[2].name:
            _set(a, 2, _weight(a, 2, True) / s)
        bshape = [1] * wb.ndim
        bshape[in_axis] = -1
        _set(b, 1, wb * s.reshape(bshape))
        return True
