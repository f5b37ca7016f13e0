"""PyTorch → ONNX exporters (``onnxq.exporters.torch`` and the ``export_model`` front door).

Bounds:
* FP32 export vs torch: max |onnx - torch| <= 1e-4 * max |torch| (measured ~5e-7), batch 1 and 3.
* ``onnxq.quantize`` of the export: output cosine >= 0.999 vs the FP32 ONNX model (the bound
  tests/test_quantize.py uses for native ONNX models).
* QAT (fake-quant) export vs torch's fake-quant output: |onnx - torch| <= 1 output quantization
  step on >= 99 % of elements (measured: bit-exact).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import onnxq  # noqa: E402
from onnxq.errors import ConfigError, ModelError, OnnxqError  # noqa: E402
from onnxq.exporters import export_model  # noqa: E402
from onnxq.exporters.torch import from_torch, load_torchscript  # noqa: E402
from tests.conftest import cosine, run_model  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # the test models are built with the deprecated-but-shipped torch.jit / torch.ao APIs
    pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
]

REL_TOL = 1e-4
COSINE = 0.999


# -- models --------------------------------------------------------------------------------
class SmallCNN(torch.nn.Module):
    """conv-bn-relu-pool-dense on 3x16x16 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)
        with torch.no_grad():  # non-trivial BatchNorm statistics
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class AttentionBlock(torch.nn.Module):
    """Dense QKV + softmax attention + dense projection + residual + LayerNorm."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.norm(x + self.proj(y))


MODELS = {"cnn": (SmallCNN, (3, 16, 16)), "attention": (AttentionBlock, (6, 32))}


def make(name: str):
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    return cls().eval(), shape


def sample(shape, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def torch_out(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exported():
    cache: dict = {}

    def get(name: str, dynamo: bool):
        key = (name, dynamo)
        if key not in cache:
            module, shape = make(name)
            cache[key] = (module, shape, from_torch(module, torch.from_numpy(sample(shape, 1, 0)),
                                                    dynamo=dynamo))
        return cache[key]

    return get


PATHS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]


# -- FP32 round trip and quantization ------------------------------------------------------
@pytest.mark.parametrize("dynamo", PATHS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp32_matches_torch_batch_1_and_3(exported, name, dynamo):
    module, shape, model = exported(name, dynamo)
    assert model.opset_import[0].version == (18 if dynamo else 17)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    name_in = model.graph.input[0].name
    for batch in (1, 3):
        x = sample(shape, batch, seed=10 + batch)
        ref = torch_out(module, x)
        got = run_model(model, {name_in: x})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


@pytest.mark.parametrize(("name", "dynamo"), [
    pytest.param("cnn", False, id="cnn-torchscript"),
    pytest.param("cnn", True, id="cnn-dynamo"),
    pytest.param("attention", False, id="attention-torchscript"),  # scalar Constant nodes
    pytest.param("attention", True, id="attention-dynamo"),
])
def test_quantize_end_to_end(exported, name, dynamo):
    _, shape, model = exported(name, dynamo)
    name_in = model.graph.input[0].name
    feeds = [{name_in: sample(shape, 4, seed)} for seed in range(8)]
    result = onnxq.quantize(model, feeds, progress=False)
    assert "QuantizeLinear" in result.report.op_histogram
    x = {name_in: sample(shape, 4, seed=99)}
    assert cosine(run_model(model, x)[0], run_model(result.model, x)[0]) >= COSINE


def test_dynamic_batch_off_keeps_example_shape():
    module, shape = make("cnn")
    model = from_torch(module, torch.from_numpy(sample(shape, 2, 0)), dynamic_batch=False,
                       input_names=["image"], output_names=["logits"])
    assert [v.name for v in model.graph.input] == ["image"]
    assert [v.name for v in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_eval_mode_forced_and_restored():
    module, shape = make("cnn")
    module.train()
    x = torch.from_numpy(sample(shape, 1, 0))
    model = from_torch(module, x)
    assert all(m.training for m in module.modules())
    ref = torch_out(module.eval(), sample(shape, 3, 5))  # export used BN running statistics
    got = run_model(model, {model.graph.input[0].name: sample(shape, 3, 5)})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_output_path_writes_one_file(tmp_path):
    module, shape = make("cnn")
    dest = tmp_path / "cnn.onnx"
    got = from_torch(module, torch.from_numpy(sample(shape, 1, 0)), dynamo=True,
                     output_path=dest)
    assert got == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]
    onnx.checker.check_model(str(dest), full_check=True)


def test_large_model_keeps_external_data(tmp_path, monkeypatch):
    """Above the protobuf limit (lowered here to 1 kB) dynamo's weights file is kept."""
    import onnxq.exporters.torch as exporter

    monkeypatch.setattr(exporter, "_LARGE", 1024)
    module, shape = make("cnn")
    x = torch.from_numpy(sample(shape, 1, 0))
    with pytest.raises(ModelError, match="output_path"):
        from_torch(module, x, dynamo=True)
    dest = tmp_path / "big.onnx"
    assert from_torch(module, x, dynamo=True, output_path=dest) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    x3 = sample(shape, 3, 8)
    ref = torch_out(module, x3)
    got = sess.run(None, {sess.get_inputs()[0].name: x3})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


# -- TorchScript files and the front door --------------------------------------------------
def test_torchscript_file_through_export_model(tmp_path):
    module, shape = make("cnn")
    path = tmp_path / "cnn.pt"
    torch.jit.trace(module, torch.from_numpy(sample(shape, 1, 0))).save(str(path))
    model = export_model(path, input_shapes=[(1, *shape)])
    x = sample(shape, 3, 7)
    ref = torch_out(module, x)
    got = run_model(model, {model.graph.input[0].name: x})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_torchscript_needs_example_inputs(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))
    with pytest.raises(OnnxqError, match="input_shapes"):
        load_torchscript(path)


def test_checkpoint_is_not_torchscript(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), str(path))
    with pytest.raises(ModelError, match="not a TorchScript archive"):
        export_model(path, input_shapes=[(1, 4)])


def test_front_door_module_and_onnx(tmp_path):
    module, shape = make("cnn")
    model = export_model(module, example_inputs=torch.from_numpy(sample(shape, 1, 0)))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    again = export_model(path)
    assert again.graph == model.graph
    assert export_model(model) is not model  # a private copy


def test_front_door_unknown_types(tmp_path):
    bad = tmp_path / "model.txt"
    bad.write_text("hello")
    with pytest.raises(ModelError, match=r"unknown model type.*supported: \.onnx"):
        export_model(bad)
    with pytest.raises(ModelError, match="unknown model type"):
        export_model(42)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ModelError, match="saved_model.pb"):
        export_model(folder)
    with pytest.raises(OnnxqError, match="example_inputs"):
        export_model(torch.nn.Linear(4, 2))


def test_importing_onnxq_imports_no_framework():
    code = ("import sys, onnxq, onnxq.exporters; "
            "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow'))")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- failures --------------------------------------------------------------------------------
class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python branch on a tensor value
            return x * 2
        return x - 1


class ReturnsFloat(torch.nn.Module):
    def forward(self, x):
        return x.sum().item()


def test_data_dependent_control_flow_fails_with_dynamo():
    with pytest.raises(ModelError, match=r"(?s)dynamo exporter.*data-dependent.*torch\.where"):
        from_torch(DataDependent(), torch.ones(2, 4), dynamo=True)


def test_non_tensor_output_fails():
    with pytest.raises(ModelError, match="returns a float"):
        from_torch(ReturnsFloat(), torch.ones(2, 4))


def test_wrong_example_inputs_fail():
    with pytest.raises(ModelError, match="fails on example_inputs"):
        from_torch(torch.nn.Linear(4, 2), torch.ones(2, 5))


def test_dynamo_below_opset_18_is_refused():
    with pytest.raises(ConfigError, match="opset >= 18"):
        from_torch(torch.nn.Linear(4, 2), torch.ones(2, 4), dynamo=True, opset=17)


# -- quantization-aware training -----------------------------------------------------------
class QATNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        aq = torch.ao.quantization
        self.quant, self.dequant = aq.QuantStub(), aq.DeQuantStub()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


@pytest.fixture(scope="module")
def qat_module():
    aq = torch.ao.quantization
    torch.manual_seed(0)
    module = QATNet().train()
    module.qconfig = aq.get_default_qat_qconfig("x86")  # per-channel s8 weights, u8 activations
    aq.fuse_modules_qat(module, [["conv", "bn", "relu"]], inplace=True)
    aq.prepare_qat(module, inplace=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(8, 3, 16, 16, generator=gen))
    module.apply(aq.disable_observer)
    return module.eval()


@pytest.mark.parametrize("dynamo", PATHS)
def test_qat_exports_qdq_matching_fake_quant(qat_module, dynamo):
    state = {k: v.clone() for k, v in qat_module.state_dict().items()}
    model = from_torch(qat_module, torch.from_numpy(sample((3, 16, 16), 1, 0)), dynamo=dynamo)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    # per-channel weights: DequantizeLinear with a 1-D scale along axis 0
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    dims.update({n.output[0]: list(n.attribute[0].t.dims) for n in model.graph.node
                 if n.op_type == "Constant" and n.attribute[0].name == "value"})
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and len(dims.get(n.input[1], [])) == 1 and dims[n.input[1]][0] > 1]
    assert per_channel, "no per-channel DequantizeLinear"
    for node in per_channel:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert axis == 0
    # export froze the qparams: nothing in the module changed
    for key, value in qat_module.state_dict().items():
        assert torch.equal(value, state[key]), key

    x = sample((3, 16, 16), 3, seed=3)
    ref = torch_out(qat_module, x)
    got = run_model(model, {model.graph.input[0].name: x})[0]  # onnxruntime loads it
    step = float(qat_module.fc.activation_post_process.scale)
    within = np.abs(got - ref) <= step * (1 + 1e-4)
    assert within.mean() >= 0.99, f"{within.mean():.4f} of outputs within 1 LSB ({step:.4g})"


def test_qat_uncalibrated_fails():
    aq = torch.ao.quantization
    torch.manual_seed(0)
    module = QATNet().train()
    module.qconfig = aq.get_default_qat_qconfig("x86")
    aq.prepare_qat(module, inplace=True)
    with pytest.raises(ModelError, match="never calibrated"):
        from_torch(module, torch.ones(1, 3, 16, 16))


def test_stock_transformer_encoder_exports_and_quantizes():
    """nn.TransformerEncoderLayer in eval mode under no_grad takes torch's fused inference
    kernel (aten::_transformer_encoder_layer_fwd), which no exporter translates; the export
    turns that path off for its duration (and restores the setting)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    net = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(1, 10, 32)
    before = torch.backends.mha.get_fastpath_enabled()
    model = from_torch(net, x)
    assert torch.backends.mha.get_fastpath_enabled() == before
    ops = {n.op_type for n in model.graph.node}
    assert "MatMul" in ops and not any("transformer" in o.lower() for o in ops)
    with torch.no_grad():
        want = net(x).numpy()
    got = run_model(model, {model.graph.input[0].name: x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-4)
    feeds = [{model.graph.input[0].name: torch.randn(1, 10, 32).numpy()} for _ in range(4)]
    result = onnxq.quantize(model, feeds, progress=False)
    assert result.report.quantized
    assert cosine(run_model(result.model, feeds[0])[0], run_model(model, feeds[0])[0]) > 0.99
