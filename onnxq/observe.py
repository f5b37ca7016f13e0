"""Make tensors computed inside If/Loop/Scan bodies observable as outputs of the main graph.

onnxruntime returns only main-graph tensors, so a tensor of a subgraph is threaded out:

- an ``If`` branch gets it as an extra branch output; the other branch returns an empty
  tensor in its place (the calibrator sees nothing when that branch did not run);
- a ``Loop`` or ``Scan`` body gets it as an extra scan output: onnxruntime stacks the value
  of every iteration, so every iteration is observed.

Works on a private ``GraphProto`` (the calibration copy), never on the user's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import helper

from onnxq.scopes import proto_subgraphs

__all__ = ["expose"]

_PREFIX = "onnxq_observe"


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    yield from (i.name for i in graph.input)
    yield from (i.name for i in graph.initializer)
    for node in graph.node:
        yield node.name
        yield from node.output
    for g in proto_subgraphs(graph):
        yield from _names(g)


class _Namer:
    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.count = 0

    def __call__(self) -> str:
        while f"{_PREFIX}_{self.count}" in self.taken:
            self.count += 1
        name = f"{_PREFIX}_{self.count}"
        self.taken.add(name)
        return name


def _local(graph: onnx.GraphProto) -> set[str]:
    """Names defined in ``graph`` itself (inputs, initializers, node outputs)."""
    return {*(i.name for i in graph.input), *(i.name for i in graph.initializer),
            *(o for n in graph.node for o in n.output if o)}


def _float_output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _export_from_body(body: onnx.GraphProto, wanted: set[str], namer: _Namer
                      ) -> dict[str, str]:
    """Expose ``wanted`` (where defined in ``body`` or deeper) as new outputs of ``body``,
    each through an Identity of a fresh name; returns tensor → new output name."""
    inner = _expose_in(body, wanted, namer)
    found = dict(inner)
    for t in sorted(wanted & _local(body)):
        found[t] = t
    outputs = {}
    for t in sorted(found):
        out = namer()
        body.node.append(helper.make_node("Identity", [found[t]], [out], name=out))
        body.output.append(_float_output(out))
        outputs[t] = out
    return outputs


def _empty(body: onnx.GraphProto, namer: _Namer) -> str:
    out = namer()
    body.node.append(helper.make_node(
        "Constant", [], [out], name=out,
        value=helper.make_tensor(out, onnx.TensorProto.FLOAT, [0], [])))
    body.output.append(_float_output(out))
    return out


def _expose_if(node: onnx.NodeProto, wanted: set[str], namer: _Namer) -> dict[str, str]:
    branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
    exported = [_export_from_body(b, wanted, namer) for b in branches]
    union = sorted({t for e in exported for t in e})
    if not union:
        return {}
    for branch, found in zip(branches, exported, strict=True):
        # an If's branches must return the same outputs, in the same order
        added = len(found)
        new = list(branch.output)[len(branch.output) - added:] if added else []
        del branch.output[len(branch.output) - added:]
        by_tensor = dict(zip(sorted(found), new, strict=True))
        for t in union:
            if t in by_tensor:
                branch.output.append(by_tensor[t])
            else:
                _empty(branch, namer)
    result = {}
    for t in union:
        out = namer()
        node.output.append(out)
        result[t] = out
    return result


def _expose_scan_outputs(node: onnx.NodeProto, wanted: set[str], namer: _Namer
                         ) -> dict[str, str]:
    body = next(a.g for a in node.attribute if a.name == "body")
    found = _export_from_body(body, wanted, namer)
    result = {}
    for t in sorted(found):
        out = namer()
        node.output.append(out)
        result[t] = out
    if node.op_type == "Scan" and found:
        for attr in node.attribute:
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.extend([0] * len(found))
    return result


def _expose_in(graph: onnx.GraphProto, wanted: set[str], namer: _Namer) -> dict[str, str]:
    """Thread the ``wanted`` tensors defined in subgraphs of ``graph``'s nodes out to
    ``graph``; returns tensor → its name in ``graph``'s scope."""
    result: dict[str, str] = {}
    for node in list(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "If":
            result.update(_expose_if(node, wanted - set(result), namer))
        elif node.op_type in ("Loop", "Scan"):
            result.update(_expose_scan_outputs(node, wanted - set(result), namer))
    return result


def expose(graph: onnx.GraphProto, tensors: Iterable[str]) -> dict[str, str]:
    """Make each of ``tensors`` an output of ``graph`` (in place); returns tensor → the output
    that carries its values. Main-graph tensors map to themselves; a tensor inside a body of
    an op other than If/Loop/Scan is left out (it cannot be observed)."""
    wanted = set(tensors)
    namer = _Namer(set(_names(graph)))
    inner = _expose_in(graph, wanted - _local(graph), namer)
    result = {t: t for t in wanted & _local(graph)}
    result.update(inner)
    outputs = {o.name for o in graph.output}
    quantized = _quantized_types(graph)
    for t in sorted(result):
        if result[t] not in outputs:
            graph.output.append(helper.make_tensor_value_info(
                result[t], quantized.get(result[t], onnx.TensorProto.FLOAT), None))
            outputs.add(result[t])
    return result


def _quantized_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of each main-graph QuantizeLinear output (its zero point's; uint8 when it
    has none): the tensors ``expose`` may be asked for that are not float."""
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({n.output[0]: a.t.data_type for n in graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value"})
    return {n.output[0]: types.get(n.input[2], onnx.TensorProto.UINT8) if len(n.input) > 2
            and n.input[2] else onnx.TensorProto.UINT8
            for n in graph.node if n.op_type == "QuantizeLinear"}
