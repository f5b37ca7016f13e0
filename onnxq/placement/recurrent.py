"""Which planned LSTMs stay float: onnxruntime's ``DynamicQuantizeLSTM`` quantizes the hidden
state at every step and runs each step's recurrent product as an int8 GEMV, which pays only
for wide layers.

Measured (2-core Intel Xeon with AMX, onnxruntime 1.32, batch 1, 2 threads, 108 shapes;
``benchmarks/bench_lstm_width.py``, docs/placement.md "Recurrent layers"), int8 ÷ float speed:
hidden sizes 16-64 0.48-1.05, 128 0.73-1.14 (above 1 only with 314 input features over 64+
steps), 256 1.18-1.62 over 64-200 steps, 512 2.4-5.1. The rule keys on the hidden size alone:
the sequence length is often the model's leading dim, which the placement sizes 1."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.quant_ops import Role

__all__ = ["MIN_INT8_HIDDEN", "slow_lstms"]

#: the least ``hidden_size`` an LSTM runs faster as DynamicQuantizeLSTM (module docstring)
MIN_INT8_HIDDEN = 256


def slow_lstms(graph: gs.Graph, plan) -> dict[str, str]:
    """Planned (dynamic int8) LSTM nodes of ``graph`` and its subgraphs that the CPU EP runs
    faster in float → the reason the report gives."""
    planned = {n.name for n in plan.nodes if n.role is Role.DYNAMIC and n.op == "LSTM"}
    found: dict[str, str] = {}
    for g in G.iter_graphs(graph):
        for node in g.nodes:
            if node.name not in planned:
                continue
            hidden = int(node.attrs.get("hidden_size", 0))
            if hidden < MIN_INT8_HIDDEN:
                found[node.name] = (
                    f"placement: LSTM with hidden_size {hidden} kept float (DynamicQuantizeLSTM "
                    f"is slower than the float LSTM below hidden_size {MIN_INT8_HIDDEN}: it "
                    "quantizes the state at every step; objective=size makes it int8)")
    return found
