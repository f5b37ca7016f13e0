"""Control-flow and recurrent test models built in code: If branches holding conv networks, a
Loop and a Scan running a MatMul RNN cell, and LSTM/GRU/RNN ops.

Same conventions as ``builders.py``: deterministic weights from ``seed``, He-scaled so
activations stay O(1), float32 inputs with a symbolic batch, unique node names.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["if_branches", "loop_rnn", "scan_rnn", "recurrent", "rate_lstm", "rate_feeds",
           "sequence_feeds"]

IR_VERSION = 8


class _Weights:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, name: str, shape, std: float) -> TensorProto:
        return numpy_helper.from_array(
            (std * self.rng.standard_normal(shape)).astype(np.float32), name)


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    ir = max(IR_VERSION, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir,
                             producer_name="onnxq-tests")


def _branch(w: _Weights, tag: str, width: int, classes: int, cin: int, source: str
            ) -> onnx.GraphProto:
    """source → Conv-Relu ×2 → Conv with the weight shared by both branches → GAP → Gemm."""
    inits = [w.normal(f"{tag}.c1.w", (width, cin, 3, 3), math.sqrt(2 / (9 * cin))),
             w.normal(f"{tag}.c1.b", (width,), 0.1),
             w.normal(f"{tag}.c2.w", (width, width, 3, 3), math.sqrt(2 / (9 * width))),
             w.normal(f"{tag}.fc.w", (classes, width), math.sqrt(4 / width)),
             w.normal(f"{tag}.fc.b", (classes,), 0.1)]
    n = helper.make_node
    nodes = [
        n("Conv", [source, f"{tag}.c1.w", f"{tag}.c1.b"], [f"{tag}.c1"], name=f"{tag}.conv1",
          pads=[1] * 4, kernel_shape=[3, 3]),
        n("Relu", [f"{tag}.c1"], [f"{tag}.r1"], name=f"{tag}.relu1"),
        n("Conv", [f"{tag}.r1", f"{tag}.c2.w"], [f"{tag}.c2"], name=f"{tag}.conv2",
          pads=[1] * 4, kernel_shape=[3, 3]),
        n("Relu", [f"{tag}.c2"], [f"{tag}.r2"], name=f"{tag}.relu2"),
        n("Conv", [f"{tag}.r2", "shared.w"], [f"{tag}.c3"], name=f"{tag}.conv3", pads=[1] * 4,
          kernel_shape=[3, 3]),
        n("GlobalAveragePool", [f"{tag}.c3"], [f"{tag}.gap"], name=f"{tag}.gap"),
        n("Flatten", [f"{tag}.gap"], [f"{tag}.flat"], name=f"{tag}.flatten"),
        n("Gemm", [f"{tag}.flat", f"{tag}.fc.w", f"{tag}.fc.b"], [f"{tag}.y"],
          name=f"{tag}.fc", transB=1),
    ]
    return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(
        f"{tag}.y", TensorProto.FLOAT, ["batch", classes])], initializer=inits)


def if_branches(seed: int = 0, opset: int = 17, width: int = 16, classes: int = 10,
                stem: bool = True) -> onnx.ModelProto:
    """``If(rate == 16000)`` whose branches hold the whole network (speech-model style): a
    main-graph stem Conv read by both branches (an outer-scope capture; ``stem=False``: the
    branches read the input and the main graph has nothing to quantize), a third conv whose
    weight lives in the main graph and is shared by both branches."""
    w = _Weights(seed)
    n = helper.make_node
    source, cin = ("stem", width) if stem else ("x", 3)
    nodes = [
        n("Conv", ["x", "stem.w", "stem.b"], ["stem_c"], name="stem.conv", pads=[1] * 4,
          kernel_shape=[3, 3]),
        n("Relu", ["stem_c"], ["stem"], name="stem.relu"),
    ] if stem else []
    nodes += [
        n("Equal", ["rate", "rate_16k"], ["is_16k"], name="is_16k"),
        n("If", ["is_16k"], ["logits"], name="by_rate",
          then_branch=_branch(w, "wide", width, classes, cin, source),
          else_branch=_branch(w, "narrow", width, classes, cin, source)),
    ]
    inits = ([w.normal("stem.w", (width, 3, 3, 3), math.sqrt(2 / 27)),
              w.normal("stem.b", (width,), 0.1)] if stem else []) + [
             w.normal("shared.w", (width, width, 3, 3), math.sqrt(2 / (9 * width))),
             numpy_helper.from_array(np.array(16000, np.int64), "rate_16k")]
    graph = helper.make_graph(
        nodes, "if_branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16]),
         helper.make_tensor_value_info("rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    return _model(graph, opset)


def _rnn_cell(w: _Weights, features: int, hidden: int, scan: bool) -> tuple[list, list]:
    """h' = Tanh(x_t·Wx + h·Wh + b) as MatMul/Add nodes; x_t is ``xt`` (Scan input) or
    Gather(x, i) of the outer sequence (Loop)."""
    n = helper.make_node
    inits = [w.normal("cell.wx", (features, hidden), math.sqrt(1 / features)),
             w.normal("cell.wh", (hidden, hidden), math.sqrt(1 / hidden)),
             w.normal("cell.b", (hidden,), 0.1)]
    nodes = [] if scan else [n("Gather", ["x", "i"], ["xt"], name="cell.step", axis=0)]
    nodes += [
        n("MatMul", ["xt", "cell.wx"], ["cell.a"], name="cell.in"),
        n("MatMul", ["h", "cell.wh"], ["cell.r"], name="cell.rec"),
        n("Add", ["cell.a", "cell.r"], ["cell.s"], name="cell.sum"),
        n("Add", ["cell.s", "cell.b"], ["cell.sb"], name="cell.bias"),
        n("Tanh", ["cell.sb"], ["h_next"], name="cell.tanh"),
    ]
    return nodes, inits


def _rnn_model(body_nodes, body_inputs, body_outputs, loop_node, w: _Weights, hidden: int,
               classes: int, features: int, opset: int, name: str, extra_nodes=(),
               extra_inits=()) -> onnx.ModelProto:
    n = helper.make_node
    nodes = [*extra_nodes, loop_node,
             n("Gemm", ["h_last", "head.w", "head.b"], ["logits"], name="head", transB=1)]
    inits = [*extra_inits, w.normal("head.w", (classes, hidden), math.sqrt(1 / hidden)),
             w.normal("head.b", (classes,), 0.1)]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", features]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    return _model(graph, opset)


def loop_rnn(seed: int = 0, opset: int = 17, features: int = 32, hidden: int = 64,
             classes: int = 10) -> onnx.ModelProto:
    """A ``Loop`` over the time axis of ``x`` running an RNN cell written as MatMuls; the
    cell's weights live in the body, the sequence is read from the outer scope."""
    w = _Weights(seed)
    n = helper.make_node
    cell, cell_inits = _rnn_cell(w, features, hidden, scan=False)
    body = helper.make_graph(
        [*cell, n("Identity", ["cond_in"], ["cond_out"], name="cell.cond")], "cell",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", hidden])],
        initializer=cell_inits)
    extra = [n("Shape", ["x"], ["x_shape"], name="seq.shape"),
             n("Gather", ["x_shape", "zero"], ["steps"], name="seq.steps", axis=0)]
    loop = n("Loop", ["steps", "", "h0"], ["h_last"], name="time_loop", body=body)
    return _rnn_model(None, None, None, loop, w, hidden, classes, features, opset, "loop_rnn",
                      extra_nodes=extra,
                      extra_inits=[numpy_helper.from_array(np.array(0, np.int64), "zero")])


def scan_rnn(seed: int = 0, opset: int = 17, features: int = 32, hidden: int = 64,
             classes: int = 10) -> onnx.ModelProto:
    """The same RNN cell in a ``Scan`` over the time axis (with a scan output as well)."""
    w = _Weights(seed)
    n = helper.make_node
    cell, cell_inits = _rnn_cell(w, features, hidden, scan=True)
    body = helper.make_graph(
        [*cell, n("Identity", ["h_next"], ["h_seq"], name="cell.copy")], "cell",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", hidden]),
         helper.make_tensor_value_info("xt", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", hidden]),
         helper.make_tensor_value_info("h_seq", TensorProto.FLOAT, ["batch", hidden])],
        initializer=cell_inits)
    loop = n("Scan", ["h0", "x"], ["h_last", "h_all"], name="time_scan", body=body,
             num_scan_inputs=1)
    return _rnn_model(None, None, None, loop, w, hidden, classes, features, opset, "scan_rnn")


def recurrent(kind: str = "LSTM", seed: int = 0, opset: int = 17, features: int = 32,
              hidden: int = 64, classes: int = 10, bidirectional: bool = False
              ) -> onnx.ModelProto:
    """A CRNN-style head: ``kind`` (LSTM, GRU or RNN) over ``x`` [time, batch, features],
    then a Gemm classifier on the last step (Y_h)."""
    w = _Weights(seed)
    n = helper.make_node
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    dirs = 2 if bidirectional else 1
    inits = [w.normal("rnn.W", (dirs, gates * hidden, features), math.sqrt(1 / features)),
             w.normal("rnn.R", (dirs, gates * hidden, hidden), math.sqrt(1 / hidden)),
             w.normal("rnn.B", (dirs, 2 * gates * hidden), 0.1),
             w.normal("head.w", (classes, dirs * hidden), math.sqrt(1 / (dirs * hidden))),
             w.normal("head.b", (classes,), 0.1)]
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward"}
    nodes = [
        n(kind, ["x", "rnn.W", "rnn.R", "rnn.B"], ["rnn.y", "rnn.h"], name="rnn", **attrs),
        n("Transpose", ["rnn.h"], ["rnn.h_t"], name="rnn.h_t", perm=[1, 0, 2]),
        n("Flatten", ["rnn.h_t"], ["rnn.flat"], name="rnn.flat", axis=1),
        n("Gemm", ["rnn.flat", "head.w", "head.b"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, f"{kind.lower()}_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    return _model(graph, opset)


def rate_lstm(seed: int = 0, opset: int = 17, features: int = 16, hidden: int = 32,
              classes: int = 4) -> onnx.ModelProto:
    """``If(rate == 16000)`` whose branches each run their own LSTM over the outer ``x``
    [time, batch, features] and a Gemm on its last state (Silero VAD's shape: a recurrent
    decoder per sample rate)."""
    w = _Weights(seed)
    n = helper.make_node

    def branch(tag: str) -> onnx.GraphProto:
        inits = [w.normal(f"{tag}.W", (1, 4 * hidden, features), math.sqrt(1 / features)),
                 w.normal(f"{tag}.R", (1, 4 * hidden, hidden), math.sqrt(1 / hidden)),
                 w.normal(f"{tag}.fc.w", (classes, hidden), math.sqrt(1 / hidden)),
                 w.normal(f"{tag}.fc.b", (classes,), 0.1)]
        nodes = [n("LSTM", ["x", f"{tag}.W", f"{tag}.R"], [f"{tag}.y", f"{tag}.h"],
                   name=f"{tag}.lstm", hidden_size=hidden),
                 n("Squeeze", [f"{tag}.h", "zero_axis"], [f"{tag}.h0"], name=f"{tag}.squeeze"),
                 n("Gemm", [f"{tag}.h0", f"{tag}.fc.w", f"{tag}.fc.b"], [f"{tag}.logits"],
                   name=f"{tag}.fc", transB=1)]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(
            f"{tag}.logits", TensorProto.FLOAT, ["batch", classes])], initializer=inits)

    nodes = [n("Equal", ["rate", "rate_16k"], ["is_16k"], name="is_16k"),
             n("If", ["is_16k"], ["logits"], name="by_rate", then_branch=branch("r16k"),
               else_branch=branch("r8k"))]
    graph = helper.make_graph(
        nodes, "rate_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["time", "batch", features]),
         helper.make_tensor_value_info("rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(np.array(16000, np.int64), "rate_16k"),
                     numpy_helper.from_array(np.array([0], np.int64), "zero_axis")])
    return _model(graph, opset)


def rate_feeds(n: int = 8, batch: int = 2, seed: int = 0, rates=(16000, 8000)
               ) -> list[dict[str, np.ndarray]]:
    """Feeds for ``if_branches``: images, with the rates cycling so both branches run."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32),
             "rate": np.array(rates[k % len(rates)], np.int64)} for k in range(n)]


def sequence_feeds(model: onnx.ModelProto, n: int = 8, batch: int = 2, steps: int = 12,
                   seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Feeds for the sequence models: x [steps, batch, features] (and h0 where it is an
    input), smooth random sequences like real features."""
    rng = np.random.default_rng(seed)
    specs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
             for i in model.graph.input}
    features = specs["x"][2]
    out = []
    for _ in range(n):
        x = np.cumsum(rng.standard_normal((steps, batch, features)), axis=0) / np.sqrt(
            np.arange(1, steps + 1))[:, None, None]
        feed = {"x": x.astype(np.float32)}
        if "h0" in specs:
            feed["h0"] = (0.5 * rng.standard_normal((batch, specs["h0"][1]))).astype(
                np.float32)
        out.append(feed)
    return out
