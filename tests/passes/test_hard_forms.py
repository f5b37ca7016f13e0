"""Exported HardSigmoid / HardSwish (``Clip(x + 3, 0, 6) / 6``, ``x · Clip(x + 3, 0, 6) / 6``:
PaddlePaddle's and older PyTorch/Keras exports) become ``HardSigmoid`` and
``x · HardSigmoid(x)``, and the placement sees the float pair as free after a Conv, as a
HardSwish op is (onnxruntime fuses both)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.passes import FusionPass, PreprocessPass
from onnxq.pipeline import Pipeline
from tests import builders as B
from tests.conftest import run_model


def _decomposed(x: str, y: str, tag: str, *, swish: bool, sixth: bool, three: float = 3.0,
                clip_max: float = 6.0) -> tuple[list, list]:
    """Nodes and initializers of ``y = [x ·] Clip(x + three, 0, clip_max) / 6``."""
    c = {f"{tag}.three": three, f"{tag}.zero": 0.0, f"{tag}.six": clip_max,
         f"{tag}.div": 1.0 / 6.0 if sixth else 6.0}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in c.items()]
    nodes = [helper.make_node("Add", [x, f"{tag}.three"], [f"{tag}.a"], name=f"{tag}.add"),
             helper.make_node("Clip", [f"{tag}.a", f"{tag}.zero", f"{tag}.six"], [f"{tag}.c"],
                              name=f"{tag}.clip")]
    top = f"{tag}.c"
    if swish:
        nodes.append(helper.make_node("Mul", [x, top], [f"{tag}.m"], name=f"{tag}.mul"))
        top = f"{tag}.m"
    nodes.append(helper.make_node("Mul" if sixth else "Div", [top, f"{tag}.div"], [y],
                                  name=f"{tag}.scale"))
    return nodes, inits


def _model(opset: int, **form) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) * 0.5).astype(np.float32),
                                 "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((6, 8, 1, 1)) * 0.3).astype(np.float32),
                                 "w2")
    act, inits = _decomposed("h", "g", "act", **form)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             *act, helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4, 10, 10])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 6, 10, 10])], [w1, w2, *inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _fused_ops(model: onnx.ModelProto) -> list[str]:
    out = Pipeline([PreprocessPass(), FusionPass()]).run(model).model
    return [n.op_type for n in out.graph.node]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("swish", [True, False], ids=["hardswish", "hardsigmoid"])
@pytest.mark.parametrize("sixth", [False, True], ids=["div6", "mul_sixth"])
def test_exported_hard_activations_are_recognised(opset, swish, sixth):
    model = _model(opset, swish=swish, sixth=sixth)
    before = model.SerializeToString()
    fused = Pipeline([PreprocessPass(), FusionPass()]).run(model).model
    assert model.SerializeToString() == before  # the input is never modified
    ops = [n.op_type for n in fused.graph.node]
    assert ops == (["Conv", "HardSigmoid", "Mul", "Conv"] if swish
                   else ["Conv", "HardSigmoid", "Conv"])
    onnx.checker.check_model(fused)
    feed = {"x": np.random.default_rng(1).standard_normal((1, 4, 10, 10)).astype(np.float32)
            * 3}
    np.testing.assert_allclose(run_model(fused, feed)[0], run_model(model, feed)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", [{"three": 2.5}, {"clip_max": 5.0}])
def test_other_constants_are_not_hard_activations(form):
    ops = _fused_ops(_model(13, swish=True, sixth=False, **form))
    assert "HardSigmoid" not in ops and "Clip" in ops


def _paddle_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every HardSwish op written as PaddlePaddle exports it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, inits = [], []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "HardSwish":
            nodes.append(node)
            continue
        n, c = _decomposed(node.input[0], node.output[0], f"hs{i}", swish=True, sixth=False)
        nodes += n
        inits += c
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out


@pytest.mark.placement
def test_a_paddle_hardswish_cnn_is_placed_like_its_hardswish_form():
    model = B.lcnet_shaped(image=96)
    paddle = _paddle_form(model)
    assert "HardSwish" not in {n.op_type for n in paddle.graph.node}
    feeds = B.feeds(model, batch=1, n=4, seed=1)
    convs = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}

    def placed(m):
        report = onnxq.quantize(m, feeds, progress=False, target="vnni").report
        kept = {n for n, why in report.skipped if why.startswith("placement")}
        return kept & convs, report.placement["predicted_speedup"]

    (kept_op, speed_op), (kept_exported, speed_exported) = placed(model), placed(paddle)
    assert kept_exported == kept_op and 0 < len(kept_op) < len(convs)
    assert speed_exported == pytest.approx(speed_op, rel=0.01)


def test_the_openvino_ep_gets_the_exported_form():
    """OpenVINO fuses ``x · Clip(x + 3, 0, 6) / 6`` itself; the rewritten form ran slower there
    in int8 (PP-OCR rec 1.9× → 0.8× FP32 on its EP), so ``target_ep=openvino`` keeps it."""
    model = _model(13, swish=True, sixth=False)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)} for _ in range(4)]
    ops = {ep: {n.op_type for n in onnxq.quantize(model, feeds, progress=False,
                                                   target_ep=ep).model.graph.node}
           for ep in ("cpu", "openvino")}
    assert not {"Clip", "Div"} & ops["cpu"]
    assert {"Clip", "Div"} <= ops["openvino"] and "HardSigmoid" not in ops["openvino"]
