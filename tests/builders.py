"""Small, deterministic ONNX test models built in code (no torch, no downloads).

Every builder takes ``seed`` (weights come from ``numpy.random.default_rng(seed)``)
and, where it matters, ``opset`` (default 17; every graph is also valid at opset 13).
Models use ``ir_version`` 8 (or the minimum the opset needs, if higher), float32 inputs
with a symbolic first dimension ``"batch"``, unique readable node names and realistically
scaled weights (He/Kaiming-normal convs, random non-trivial BatchNorm statistics), so
quantization error measured on them is representative.

``feeds(model, batch, seed, n)`` makes matching random inputs; ``ALL_SMALL`` maps the
names of the quick builders to the functions.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8

__all__ = [
    "ALL_SMALL",
    "attention_block",
    "bert_embedded",
    "bert_shaped",
    "conv_bn_relu",
    "depthwise_hardswish",
    "feeds",
    "matmul_add",
    "matmul_add_3d",
    "residual_block",
    "resnet18_shaped",
]


class _Builder:
    """Collects nodes and initializers; each op method returns its output tensor name."""

    def __init__(self, seed: int, opset: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self._node_names: set[str] = set()
        # Rough per-tensor second moment E[x^2]; lets BN running stats match the data so
        # activations stay O(1) through deep nets. Unknown tensors count as 1.
        self.m2: dict[str, float] = {}

    # -- plumbing -----------------------------------------------------------------
    def param(self, name: str, array: np.ndarray) -> str:
        if name in self.inits:
            raise ValueError(f"duplicate initializer {name!r}")
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, name: str, value, dtype=np.float32) -> str:
        """A shared constant initializer (created once, reused by name)."""
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        out = out or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def normal(self, shape, std: float, mean: float = 0.0) -> np.ndarray:
        return (mean + std * self.rng.standard_normal(shape)).astype(np.float32)

    def uniform(self, shape, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, shape).astype(np.float32)

    # -- CNN layers ---------------------------------------------------------------
    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, stride: int = 1,
             pad: int | None = None, group: int = 1, bias: bool = False) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = (cin // group) * k * k
        w = self.param(f"{name}.weight", self.normal((cout, cin // group, k, k), math.sqrt(2.0 / fan_in)))
        inputs = [x, w]
        if bias:
            inputs.append(self.param(f"{name}.bias", self.normal((cout,), 0.1)))
        y = self.op("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                    pads=[pad] * 4, group=group, dilations=[1, 1])
        self.m2[y] = 2.0 * self.m2.get(x, 1.0) + (0.01 if bias else 0.0)
        return y

    def bn(self, x: str, name: str, c: int) -> str:
        scale = self.param(f"{name}.weight", self.uniform((c,), 0.5, 1.5))
        beta = self.param(f"{name}.bias", self.normal((c,), 0.1))
        m2 = self.m2.get(x, 1.0)
        mean = self.param(f"{name}.running_mean", self.normal((c,), 0.2 * math.sqrt(m2)))
        var = self.param(f"{name}.running_var", m2 * self.uniform((c,), 0.5, 2.0))
        return self.op("BatchNormalization", [x, scale, beta, mean, var], name, epsilon=1e-5)

    def relu(self, x: str, name: str) -> str:
        y = self.op("Relu", [x], name)
        self.m2[y] = 0.5 * self.m2.get(x, 1.0)
        return y

    def add(self, a: str, b: str, name: str) -> str:
        y = self.op("Add", [a, b], name)
        self.m2[y] = self.m2.get(a, 1.0) + self.m2.get(b, 1.0)
        return y

    def pool(self, op_type: str, x: str, name: str, k: int, stride: int, pad: int = 0) -> str:
        y = self.op(op_type, [x], name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        gain = 0.5 + 0.5 * k * k if op_type == "MaxPool" else 1.0  # max of k*k ~relu(N(0,1))
        self.m2[y] = gain * self.m2.get(x, 1.0)
        return y

    def hardswish(self, x: str, name: str) -> str:
        if self.opset >= 14:
            return self.op("HardSwish", [x], name)
        return self.hsig_mul(x, name)

    def hsig_mul(self, x: str, name: str) -> str:
        """x * HardSigmoid(x) with hard-swish constants (alpha=1/6, beta=0.5)."""
        s = self.op("HardSigmoid", [x], f"{name}.hsig", alpha=1.0 / 6.0, beta=0.5)
        return self.op("Mul", [x, s], f"{name}.mul")

    def gemm(self, x: str, name: str, cin: int, cout: int, out: str | None = None,
             gain: float = 1.0) -> str:
        w = self.param(f"{name}.weight", self.normal((cout, cin), math.sqrt(gain / cin)))
        b = self.param(f"{name}.bias", self.normal((cout,), 0.1))
        return self.op("Gemm", [x, w, b], name, out=out, transB=1)

    def head(self, x: str, cin: int, num_classes: int) -> str:
        x = self.op("GlobalAveragePool", [x], "gap")
        x = self.op("Flatten", [x], "flatten", axis=1)
        # gain 4: GAP averages away spatial variance; keeps logits O(1) like a trained head
        return self.gemm(x, "fc", cin, num_classes, out="logits", gain=4.0)

    def basic_block(self, x: str, name: str, cin: int, cout: int, stride: int = 1) -> str:
        """ResNet basic block; 1x1 conv + BN shortcut when the shape changes."""
        y = self.relu(self.bn(self.conv(x, f"{name}.conv1", cin, cout, 3, stride), f"{name}.bn1", cout),
                      f"{name}.relu1")
        y = self.bn(self.conv(y, f"{name}.conv2", cout, cout, 3), f"{name}.bn2", cout)
        if stride != 1 or cin != cout:
            sc = self.conv(x, f"{name}.downsample.conv", cin, cout, 1, stride, pad=0)
            x = self.bn(sc, f"{name}.downsample.bn", cout)
        return self.relu(self.add(y, x, f"{name}.add"), f"{name}.relu2")

    # -- transformer layers -------------------------------------------------------
    def linear(self, x: str, name: str, cin: int, cout: int, std: float, bias_std: float,
               out: str | None = None) -> str:
        w = self.param(f"{name}.weight", self.normal((cin, cout), std))
        b = self.param(f"{name}.bias", self.normal((cout,), bias_std))
        y = self.op("MatMul", [x, w], f"{name}.matmul")
        return self.op("Add", [y, b], f"{name}.add", out=out)

    def reduce_mean(self, x: str, name: str) -> str:
        if self.opset >= 18:
            axes = self.const("axes_last", [-1], np.int64)
            return self.op("ReduceMean", [x, axes], name, keepdims=1)
        return self.op("ReduceMean", [x], name, axes=[-1], keepdims=1)

    def layernorm(self, x: str, name: str, hidden: int, eps: float, noise: float,
                  out: str | None = None) -> str:
        gamma = self.param(f"{name}.weight", self.normal((hidden,), noise, mean=1.0))
        beta = self.param(f"{name}.bias", self.normal((hidden,), noise))
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, gamma, beta], name, out=out, axis=-1, epsilon=eps)
        mean = self.reduce_mean(x, f"{name}.mean")
        d = self.op("Sub", [x, mean], f"{name}.sub")
        sq = self.op("Pow", [d, self.const("const_two", 2.0)], f"{name}.pow")
        var = self.reduce_mean(sq, f"{name}.var")
        var = self.op("Add", [var, self.const(f"ln_eps_{eps:g}", eps)], f"{name}.add_eps")
        std = self.op("Sqrt", [var], f"{name}.sqrt")
        y = self.op("Div", [d, std], f"{name}.div")
        y = self.op("Mul", [y, gamma], f"{name}.mul_gamma")
        return self.op("Add", [y, beta], f"{name}.add_beta", out=out)

    def gelu(self, x: str, name: str) -> str:
        """x * 0.5 * (1 + erf(x / sqrt(2)))."""
        y = self.op("Div", [x, self.const("const_sqrt2", math.sqrt(2.0))], f"{name}.div")
        y = self.op("Erf", [y], f"{name}.erf")
        y = self.op("Add", [y, self.const("const_one", 1.0)], f"{name}.add_one")
        y = self.op("Mul", [x, y], f"{name}.mul")
        return self.op("Mul", [y, self.const("const_half", 0.5)], f"{name}.mul_half")

    # -- model --------------------------------------------------------------------
    def model(self, name: str, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]
              ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            initializer=list(self.inits.values()),
        )
        opsets = [helper.make_opsetid("", self.opset)]
        ir = max(IR_VERSION, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir,
                                 producer_name="onnxq-tests")


# ---------------------------------------------------------------------------------------
# CNN builders
# ---------------------------------------------------------------------------------------
def conv_bn_relu(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Conv(3->8)+BN+Relu, Conv(8->8)+BN+Relu, GAP, Flatten, Gemm(8->10)."""
    b = _Builder(seed, opset)
    x = b.relu(b.bn(b.conv("input", "conv1", 3, 8, 3, bias=True), "bn1", 8), "relu1")
    x = b.relu(b.bn(b.conv(x, "conv2", 8, 8, 3), "bn2", 8), "relu2")
    b.head(x, 8, 10)
    return b.model("conv_bn_relu", [("input", ["batch", 3, 16, 16])], [("logits", ["batch", 10])])


def residual_block(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Stem 8->16, identity basic block, MaxPool 2x2, stride-2 downsampling block, head."""
    b = _Builder(seed, opset)
    x = b.relu(b.bn(b.conv("input", "stem.conv", 8, 16, 3), "stem.bn", 16), "stem.relu")
    x = b.basic_block(x, "block1", 16, 16)
    x = b.pool("MaxPool", x, "maxpool", 2, 2)
    x = b.basic_block(x, "block2", 16, 32, stride=2)
    b.head(x, 32, 10)
    return b.model("residual_block", [("input", ["batch", 8, 16, 16])], [("logits", ["batch", 10])])


def depthwise_hardswish(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """MobileNet-ish: strided conv, depthwise/pointwise blocks with HardSwish and
    x*HardSigmoid(x), AveragePool, two-branch Concat, head. HardSwish becomes
    Mul(x, HardSigmoid(x)) below opset 14."""
    b = _Builder(seed, opset)
    x = b.hardswish(b.bn(b.conv("input", "conv1", 3, 16, 3, stride=2), "bn1", 16), "hswish1")
    x = b.hardswish(b.bn(b.conv(x, "dwconv2", 16, 16, 3, group=16), "bn2", 16), "hswish2")
    x = b.relu(b.bn(b.conv(x, "pwconv3", 16, 32, 1), "bn3", 32), "relu3")
    x = b.hsig_mul(b.bn(b.conv(x, "dwconv4", 32, 32, 3, group=32), "bn4", 32), "hsig4")
    x = b.hsig_mul(b.bn(b.conv(x, "pwconv5", 32, 32, 1), "bn5", 32), "hsig5")
    x = b.pool("AveragePool", x, "avgpool", 2, 2)
    xa = b.relu(b.conv(x, "branch_a.conv", 32, 16, 1, bias=True), "branch_a.relu")
    xb = b.relu(b.conv(x, "branch_b.conv", 32, 16, 3, bias=True), "branch_b.relu")
    x = b.op("Concat", [xa, xb], "concat", axis=1)
    b.head(x, 32, 10)
    return b.model("depthwise_hardswish", [("input", ["batch", 3, 32, 32])],
                   [("logits", ["batch", 10])])


def resnet18_shaped(seed: int = 0, opset: int = 17, image: int = 224,
                    num_classes: int = 1000) -> onnx.ModelProto:
    """ResNet-18 topology with random He-init weights and random BN statistics."""
    b = _Builder(seed, opset)
    x = b.relu(b.bn(b.conv("input", "conv1", 3, 64, 7, stride=2, pad=3), "bn1", 64), "relu")
    x = b.pool("MaxPool", x, "maxpool", 3, 2, pad=1)
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512], start=1):
        for i in range(2):
            stride = 2 if (i == 0 and stage > 1) else 1
            x = b.basic_block(x, f"layer{stage}.{i}", cin, cout, stride)
            cin = cout
    b.head(x, 512, num_classes)
    return b.model("resnet18_shaped", [("input", ["batch", 3, image, image])],
                   [("logits", ["batch", num_classes])])


def mobilenet_shaped(seed: int = 0, opset: int = 17, image: int = 224,
                     num_classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV3-like stack: HardSwish stem, depthwise-separable blocks (HardSwish or Relu),
    inverted residuals with Add, GlobalAveragePool head. Random He-init weights."""
    b = _Builder(seed, opset)
    x = b.hardswish(b.bn(b.conv("input", "stem", 3, 16, 3, stride=2), "stem.bn", 16),
                    "stem.hswish")
    # (expansion, out channels, stride, activation)
    cfg = [(1, 16, 1, "relu"), (4, 24, 2, "relu"), (3, 24, 1, "relu"), (3, 40, 2, "hswish"),
           (3, 40, 1, "hswish"), (6, 80, 2, "hswish"), (2.5, 80, 1, "hswish"),
           (6, 112, 1, "hswish"), (6, 160, 2, "hswish"), (6, 160, 1, "hswish")]
    cin = 16
    for i, (exp, cout, stride, act) in enumerate(cfg):
        mid, name, inp = int(cin * exp), f"block{i}", x
        h = x
        if mid != cin:
            h = b.bn(b.conv(h, f"{name}.expand", cin, mid, 1), f"{name}.expand.bn", mid)
            h = b.relu(h, f"{name}.expand.act") if act == "relu" else b.hardswish(
                h, f"{name}.expand.act")
        h = b.bn(b.conv(h, f"{name}.dw", mid, mid, 3, stride=stride, group=mid),
                 f"{name}.dw.bn", mid)
        h = b.relu(h, f"{name}.dw.act") if act == "relu" else b.hardswish(h, f"{name}.dw.act")
        h = b.bn(b.conv(h, f"{name}.project", mid, cout, 1), f"{name}.project.bn", cout)
        x = b.add(inp, h, f"{name}.add") if stride == 1 and cin == cout else h
        cin = cout
    x = b.hardswish(b.bn(b.conv(x, "last", cin, 960, 1), "last.bn", 960), "last.hswish")
    b.head(x, 960, num_classes)
    return b.model("mobilenet_shaped", [("input", ["batch", 3, image, image])],
                   [("logits", ["batch", num_classes])])


def lcnet_shaped(seed: int = 0, opset: int = 17, image: int = 224,
                 num_classes: int = 1000) -> onnx.ModelProto:
    """PP-LCNet-like stack: HardSwish after every conv, depthwise 3x3/5x5 + pointwise blocks,
    squeeze-excitation (GAP, 1x1 Relu, 1x1, HardSigmoid, Mul) in the last three blocks, a 1x1
    "last conv" after the pooling and a Gemm head. Random He-init weights."""
    b = _Builder(seed, opset)
    x = b.hardswish(b.bn(b.conv("input", "stem", 3, 16, 3, stride=2), "stem.bn", 16),
                    "stem.hswish")
    # (kernel, in, out, stride, squeeze-excitation)
    cfg = [(3, 16, 32, 1, False), (3, 32, 64, 2, False), (3, 64, 64, 1, False),
           (3, 64, 128, 2, False), (3, 128, 128, 1, False), (3, 128, 256, 2, False)]
    cfg += [(5, 256, 256, 1, False)] * 4 + [(5, 256, 256, 1, True), (5, 256, 512, 2, True),
                                            (5, 512, 512, 1, True)]
    for i, (k, cin, cout, stride, se) in enumerate(cfg):
        name = f"block{i}"
        x = b.hardswish(b.bn(b.conv(x, f"{name}.dw", cin, cin, k, stride=stride, group=cin),
                             f"{name}.dw.bn", cin), f"{name}.dw.act")
        if se:
            g = b.op("GlobalAveragePool", [x], f"{name}.se.pool")
            g = b.relu(b.conv(g, f"{name}.se.reduce", cin, cin // 4, 1, bias=True),
                       f"{name}.se.relu")
            g = b.conv(g, f"{name}.se.expand", cin // 4, cin, 1, bias=True)
            g = b.op("HardSigmoid", [g], f"{name}.se.gate", alpha=1.0 / 6.0, beta=0.5)
            x = b.op("Mul", [x, g], f"{name}.se.mul")
        x = b.hardswish(b.bn(b.conv(x, f"{name}.pw", cin, cout, 1), f"{name}.pw.bn", cout),
                        f"{name}.pw.act")
    x = b.op("GlobalAveragePool", [x], "pool")
    x = b.hardswish(b.conv(x, "last_conv", 512, 1280, 1, bias=True), "last_conv.act")
    x = b.op("Flatten", [x], "flatten", axis=1)
    b.gemm(x, "fc", 1280, num_classes, out="logits", gain=4.0)
    return b.model("lcnet_shaped", [("input", ["batch", 3, image, image])],
                   [("logits", ["batch", num_classes])])


def blaze_shaped(seed: int = 0, opset: int = 17, image: int = 128, channels: int = 32,
                 blocks: int = 8) -> onnx.ModelProto:
    """BlazeFace-like: a 5x5 stride-2 stem, then blocks depthwise 3x3 -> pointwise 1x1 ->
    Add(residual) -> Relu; every third block has stride 2 and a 2x2 MaxPool on its residual."""
    b = _Builder(seed, opset)
    c = channels
    x = b.relu(b.conv("input", "stem", 3, c, 5, stride=2, bias=True), "stem.relu")
    for i in range(blocks):
        stride = 2 if i % 3 == 2 else 1
        y = b.conv(x, f"block{i}.dw", c, c, 3, stride=stride, group=c, bias=True)
        y = b.conv(y, f"block{i}.pw", c, c, 1, bias=True)
        r = b.pool("MaxPool", x, f"block{i}.pool", 2, 2) if stride == 2 else x
        x = b.relu(b.add(y, r, f"block{i}.add"), f"block{i}.relu")
    return b.model("blaze_shaped", [("input", [1, 3, image, image])], [(x, None)])


# ---------------------------------------------------------------------------------------
# MatMul / transformer builders
# ---------------------------------------------------------------------------------------
def _mlp(b: _Builder, shape: list) -> onnx.ModelProto:
    x = b.linear("input", "fc1", 64, 128, math.sqrt(2.0 / 64), 0.1)
    x = b.relu(x, "relu1")
    b.linear(x, "fc2", 128, 32, math.sqrt(1.0 / 128), 0.1, out="output")
    return b.model(f"matmul_add_{len(shape)}d", [("input", shape)], [("output", shape[:-1] + [32])])


def matmul_add(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """[batch,64] -> MatMul(64x128)+Add -> Relu -> MatMul(128x32)+Add -> "output"."""
    return _mlp(_Builder(seed, opset), ["batch", 64])


def matmul_add_3d(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Same as matmul_add on a [batch,16,64] input (transformer-style dense layers)."""
    return _mlp(_Builder(seed, opset), ["batch", 16, 64])


def _encoder(b: _Builder, x: str, layers: int, hidden: int, heads: int,
             wstd: float | None, bias_std: float, ln_eps: float, ln_noise: float) -> str:
    """Stack of BERT-style post-LN encoder layers; the last one writes "hidden_out"."""
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
    d = hidden // heads
    split = b.const("shape_split_heads", [0, 0, heads, d], np.int64)
    merge = b.const("shape_merge_heads", [0, 0, hidden], np.int64)
    scale = b.const("attn_scale", 1.0 / math.sqrt(d))
    std_h = wstd if wstd is not None else math.sqrt(1.0 / hidden)
    std_ff = wstd if wstd is not None else math.sqrt(1.0 / (4 * hidden))

    def heads_of(t: str, name: str, perm: list[int]) -> str:
        t = b.op("Reshape", [t, split], f"{name}_reshape")
        return b.op("Transpose", [t], f"{name}_transpose", perm=perm)

    for i in range(layers):
        p = f"layer{i}"
        q = b.linear(x, f"{p}.attn.q", hidden, hidden, std_h, bias_std)
        k = b.linear(x, f"{p}.attn.k", hidden, hidden, std_h, bias_std)
        v = b.linear(x, f"{p}.attn.v", hidden, hidden, std_h, bias_std)
        q = heads_of(q, f"{p}.attn.q", [0, 2, 1, 3])  # [b, h, s, d]
        k = heads_of(k, f"{p}.attn.k", [0, 2, 3, 1])  # [b, h, d, s]
        v = heads_of(v, f"{p}.attn.v", [0, 2, 1, 3])
        s = b.op("MatMul", [q, k], f"{p}.attn.scores")
        s = b.op("Mul", [s, scale], f"{p}.attn.scale")
        s = b.op("Softmax", [s], f"{p}.attn.softmax", axis=-1)
        c = b.op("MatMul", [s, v], f"{p}.attn.context")
        c = b.op("Transpose", [c], f"{p}.attn.context_transpose", perm=[0, 2, 1, 3])
        c = b.op("Reshape", [c, merge], f"{p}.attn.context_reshape")
        o = b.linear(c, f"{p}.attn.out", hidden, hidden, std_h, bias_std)
        o = b.op("Add", [o, x], f"{p}.attn.residual")
        x1 = b.layernorm(o, f"{p}.attn.layernorm", hidden, ln_eps, ln_noise)
        f = b.linear(x1, f"{p}.ffn.fc1", hidden, 4 * hidden, std_h, bias_std)
        f = b.gelu(f, f"{p}.ffn.gelu")
        f = b.linear(f, f"{p}.ffn.fc2", 4 * hidden, hidden, std_ff, bias_std)
        f = b.op("Add", [f, x1], f"{p}.ffn.residual")
        last = i == layers - 1
        x = b.layernorm(f, f"{p}.ffn.layernorm", hidden, ln_eps, ln_noise,
                        out="hidden_out" if last else None)
    return x


def attention_block(seed: int = 0, opset: int = 17, seq: int = 16, hidden: int = 64,
                    heads: int = 4, layers: int = 1) -> onnx.ModelProto:
    """BERT-style encoder layer(s): "hidden_in" [batch,seq,hidden] -> "hidden_out".
    LayerNormalization is decomposed into primitive ops below opset 17."""
    if layers < 1:
        raise ValueError("layers must be >= 1")
    b = _Builder(seed, opset)
    _encoder(b, "hidden_in", layers, hidden, heads, None, 0.1, 1e-5, 0.05)
    shape = ["batch", seq, hidden]
    return b.model("attention_block", [("hidden_in", shape)], [("hidden_out", shape)])


def bert_shaped(seed: int = 0, opset: int = 17, layers: int = 12, hidden: int = 768,
                heads: int = 12, seq: int = 128) -> onnx.ModelProto:
    """BERT-base-shaped encoder stack (weights ~ N(0, 0.02)); about 340 MB of weights."""
    if layers < 1:
        raise ValueError("layers must be >= 1")
    b = _Builder(seed, opset)
    _encoder(b, "hidden_in", layers, hidden, heads, 0.02, 0.02, 1e-12, 0.02)
    shape = ["batch", seq, hidden]
    return b.model("bert_shaped", [("hidden_in", shape)], [("hidden_out", shape)])


def bert_embedded(seed: int = 0, opset: int = 17, vocab: int = 8000, layers: int = 2,
                  hidden: int = 128, heads: int = 4, seq: int = 32) -> onnx.ModelProto:
    """A MiniLM-class encoder with its embeddings: token ids "input_ids" [batch, seq] (int64)
    → word-embedding Gather + position-embedding Gather (constant positions) → LayerNorm →
    encoder layers → "hidden_out". Most of its bytes are the word-embedding table."""
    b = _Builder(seed, opset)
    words = b.param("embeddings.word", b.normal((vocab, hidden), 0.05))
    positions = b.param("embeddings.position", b.normal((seq, hidden), 0.02))
    ids = b.const("position_ids", np.arange(seq)[None, :], np.int64)
    w = b.op("Gather", [words, "input_ids"], "embeddings.word_lookup", axis=0)
    p = b.op("Gather", [positions, ids], "embeddings.position_lookup", axis=0)
    x = b.op("Add", [w, p], "embeddings.add")
    x = b.layernorm(x, "embeddings.layernorm", hidden, 1e-12, 0.02)
    _encoder(b, x, layers, hidden, heads, None, 0.1, 1e-12, 0.02)
    model = b.model("bert_embedded", [], [("hidden_out", ["batch", seq, hidden])])
    model.graph.input.insert(0, helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                              ["batch", seq]))
    return model


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float16, as half-precision exports come: float32 weights,
    declared types, Cast targets and Constant/ConstantOfShape values become float16 (in
    bodies too)."""
    half, full = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    out = onnx.ModelProto()
    out.CopyFrom(model)

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_type == full:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16),
                                               t.name))

    def graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            tensor(t)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type == full:
                vi.type.tensor_type.elem_type = half
        for node in g.node:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == full:
                    a.i = half
                if a.type == onnx.AttributeProto.TENSOR:
                    tensor(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    graph(out.graph)
    return out


def feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0, n: int = 1
          ) -> list[dict[str, np.ndarray]]:
    """``n`` deterministic random feeds for the model's (non-initializer) graph inputs.
    Symbolic/unknown dims become ``batch``; floats are standard normal, ints in [0, 10)."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        specs.append((inp.name, shape, helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    out = []
    for _ in range(n):
        feed = {}
        for name, shape, dtype in specs:
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                feed[name] = rng.integers(0, 10, shape).astype(dtype)
        out.append(feed)
    return out


ALL_SMALL = MappingProxyType({
    "conv_bn_relu": conv_bn_relu,
    "residual_block": residual_block,
    "depthwise_hardswish": depthwise_hardswish,
    "matmul_add": matmul_add,
    "matmul_add_3d": matmul_add_3d,
    "attention_block": attention_block,
})
