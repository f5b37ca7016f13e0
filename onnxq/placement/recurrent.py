"""Which planned LSTMs stay float: onnxruntime's ``DynamicQuantizeLSTM`` quantizes the hidden
state at every step and runs each step's recurrent product as an int8 GEMV, which pays only
for layers wide enough. How wide depends on the CPU, so the threshold is a cost-table entry
(``lstm_min_int8_hidden``), measured with ``benchmarks/bench_lstm_width.py`` (batch 1, 2
threads, 108 shapes; docs/placement.md "Recurrent layers"), int8 ÷ float speed:

- Intel Xeon with AMX: hidden sizes 16-64 0.48-1.05, 128 0.73-1.14 (above 1 only with 314
  input features over 64+ steps), 256 1.18-1.62 over 64-200 steps, 512 2.4-5.1 → 256.
- AMD Zen 4 with AVX-512 VNNI (two runs): 16 0.64-0.97, 32 0.76-1.51, 64 0.86-1.71
  (geometric mean 1.15-1.24), 128 0.86-1.85 (1.17-1.21), 256 1.09-1.92 → 64.
- AVX2 without VNNI: not measured; the AMX figure, the conservative one.

The rule keys on the hidden size alone: the sequence length is often the model's leading dim,
which the placement sizes 1."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.placement.place import PLACED
from onnxq.quant_ops import Role

__all__ = ["MIN_INT8_HIDDEN", "slow_lstms"]

#: the least ``hidden_size`` an LSTM runs faster as DynamicQuantizeLSTM where the cost table
#: did not measure it (module docstring)
MIN_INT8_HIDDEN = 256


def slow_lstms(graph: gs.Graph, plan, min_hidden: int = MIN_INT8_HIDDEN) -> dict[str, str]:
    """Planned (dynamic int8) LSTM nodes of ``graph`` and its subgraphs narrower than
    ``min_hidden``, which the CPU EP runs faster in float → the reason the report gives (it
    starts with ``PLACED``, so that a plan made again keeps it: ``api._replan``)."""
    planned = {n.name for n in plan.nodes if n.role is Role.DYNAMIC and n.op == "LSTM"}
    found: dict[str, str] = {}
    for g in G.iter_graphs(graph):
        for node in g.nodes:
            if node.name not in planned:
                continue
            hidden = int(node.attrs.get("hidden_size", 0))
            if hidden < min_hidden:
                found[node.name] = (
                    f"{PLACED} (an LSTM with hidden_size {hidden}: DynamicQuantizeLSTM is "
                    f"slower than the float LSTM below hidden_size {min_hidden} on this "
                    "target, it quantizes the state at every step; objective=size makes it "
                    "int8)")
    return found
