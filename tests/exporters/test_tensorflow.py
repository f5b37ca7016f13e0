"""TensorFlow / Keras / TFLite → ONNX exporters (``onnxq.exporters.tensorflow``, tf2onnx).

Bounds:
* FP32 export vs the framework (Keras for Keras files and SavedModels, the TFLite interpreter
  for ``.tflite``): max |onnx - framework| <= 1e-4 * max |framework| (measured <= 5e-7),
  batch 1 and 3.
* ``onnxq.quantize`` of the export: output cosine >= 0.999 vs the FP32 ONNX model (the bound
  tests/test_quantize.py uses for native ONNX models).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

import onnxq  # noqa: E402
from onnxq.errors import ModelError, OnnxqError, UnsupportedOpError  # noqa: E402
from onnxq.exporters import export_model, validate_export  # noqa: E402
from onnxq.exporters.tensorflow import from_keras, from_saved_model, from_tflite  # noqa: E402
from tests.conftest import cosine, run_model  # noqa: E402

pytestmark = [
    pytest.mark.tf,
    # Keras 3.15 converts tensors with np.array(x) inside its own code (numpy 2 notice)
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]

REL_TOL = 1e-4
COSINE = 0.999


# -- models --------------------------------------------------------------------------------
def small_cnn():
    """conv-bn-relu-pool-dense on 16x16x3 images (NHWC)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(bn(x))
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    model = keras.Model(inp, keras.layers.Dense(10)(x), name="small_cnn")
    rng = np.random.default_rng(0)  # non-trivial BatchNorm statistics
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.uniform(-0.2, 0.2, beta.shape),
                    rng.uniform(-0.5, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def attention_block(activation: str = "relu"):
    """Multi-head self-attention (softmax) + residual + LayerNorm + dense FFN + residual."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 32), name="tokens")
    att = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inp, inp)
    x = keras.layers.LayerNormalization()(inp + att)
    hidden = keras.layers.Dense(64, activation=activation)(x)
    out = keras.layers.LayerNormalization()(x + keras.layers.Dense(32)(hidden))
    return keras.Model(inp, out, name=f"attention_{activation}")


MODELS = {"cnn": (small_cnn, (16, 16, 3)), "attention": (attention_block, (6, 32))}


def sample(shape, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def tflite_out(path: str, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated for ai_edge_litert
        interp = tf.lite.Interpreter(model_path=path)
    index = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(index, x.shape)
    interp.allocate_tensors()
    interp.set_tensor(index, x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Per model: the Keras object, a .keras file, a SavedModel folder, a .tflite file."""
    root = tmp_path_factory.mktemp("tf_models")
    out = {}
    for name, (build, shape) in MODELS.items():
        model = build()
        keras_file = root / f"{name}.keras"
        model.save(keras_file)
        saved = root / f"{name}_saved_model"
        model.export(str(saved), verbose=False)
        tflite = root / f"{name}.tflite"
        tflite.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
        out[name] = {"shape": shape, "keras": model, "keras_file": keras_file,
                     "saved_model": saved, "tflite": tflite}
    return out


@pytest.fixture(scope="module")
def converted(artifacts):
    cache: dict = {}

    def get(name: str, route: str):
        if (name, route) not in cache:
            cache[name, route] = export_model(artifacts[name][route])
        return cache[name, route]

    return get


ROUTES = ["keras", "keras_file", "saved_model", "tflite"]


# -- FP32 round trip and quantization ------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp32_matches_framework_batch_1_and_3(artifacts, converted, name, route):
    art = artifacts[name]
    model = converted(name, route)
    assert model.opset_import[0].version == 17
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert model.graph.input[0].name == ("image" if name == "cnn" else "tokens")
    for batch in (1, 3):
        x = sample(art["shape"], batch, seed=10 + batch)
        if route == "tflite":
            ref = tflite_out(str(art["tflite"]), x)
        else:
            ref = art["keras"](x, training=False).numpy()
        got = run_model(model, {model.graph.input[0].name: x})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


@pytest.mark.parametrize("route", ["keras", "saved_model", "tflite"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantize_end_to_end(artifacts, converted, name, route):
    shape = artifacts[name]["shape"]
    model = converted(name, route)
    name_in = model.graph.input[0].name
    feeds = [{name_in: sample(shape, 4, seed)} for seed in range(8)]
    result = onnxq.quantize(model, feeds, progress=False)
    assert "QuantizeLinear" in result.report.op_histogram
    x = {name_in: sample(shape, 4, seed=99)}
    assert cosine(run_model(model, x)[0], run_model(result.model, x)[0]) >= COSINE


def test_h5_file_and_fixed_batch(artifacts, tmp_path):
    art = artifacts["cnn"]
    path = tmp_path / "cnn.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HDF5 is Keras' legacy format
        art["keras"].save(path)
    model = export_model(path, opset=13)
    assert model.opset_import[0].version == 13
    x = sample(art["shape"], 2, seed=4)
    ref = art["keras"](x, training=False).numpy()
    assert np.abs(run_model(model, {"image": x})[0] - ref).max() <= REL_TOL * np.abs(ref).max()
    fixed = from_keras(art["keras"], input_signature=[(2, 16, 16, 3)], dynamic_batch=False)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_multi_input_keras_model():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([keras.layers.Dense(5)(a), keras.layers.Dense(5)(b)])
    model = keras.Model([a, b], [keras.layers.Dense(2)(joined), joined])
    onnx_model = from_keras(model, output_names=["logits", "features"])
    assert [v.name for v in onnx_model.graph.input] == ["a", "b"]
    assert [v.name for v in onnx_model.graph.output] == ["logits", "features"]
    xa, xb = sample((4,), 3, 1), sample((3,), 3, 2)
    refs = model([xa, xb], training=False)
    for ref, got in zip(refs, run_model(onnx_model, {"a": xa, "b": xb}), strict=True):
        assert np.abs(got - ref.numpy()).max() <= REL_TOL * np.abs(ref.numpy()).max()


# -- ops ONNX Runtime cannot run -----------------------------------------------------------
def test_exact_gelu_converts_through_erfc():
    """Keras 3's default GELU is exact, 0.5·x·erfc(-x/√2), and TensorFlow's Erfc has no
    tf2onnx conversion (the model was refused, with a hint to retrain with the approximate
    GELU): the exporter writes it as 1 - Erf(x)."""
    model = attention_block(activation="gelu")
    onnx_model = from_keras(model)
    ops = {n.op_type for n in onnx_model.graph.node}
    assert "Erf" in ops and "Erfc" not in ops
    x = sample((6, 32), 3, 4)
    ref = model(x, training=False).numpy()
    got = run_model(onnx_model, {onnx_model.graph.input[0].name: x})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_an_unconvertible_op_is_named_with_its_fix():
    graph = helper.make_graph(
        [helper.make_node("Erfc", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(UnsupportedOpError, match=r"(?s)Erfc.*approximate=True"):
        validate_export(helper.make_model(graph), "tf2onnx")


@pytest.mark.parametrize("approximate", [False, True])
def test_tflite_gelu_converts(tmp_path, approximate):
    """The TFLite converter fuses GELU into one TFL_GELU op, which tf2onnx 1.17 does not
    convert (such files were refused): the exporter writes it with Erf, or Tanh for the
    approximate form."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 32), name="tokens")
    hidden = keras.layers.Dense(64)(inp)
    hidden = keras.layers.Activation(
        lambda t: keras.activations.gelu(t, approximate=approximate))(hidden)
    model = keras.Model(inp, keras.layers.Dense(32)(hidden))
    path = tmp_path / "gelu.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    onnx_model = from_tflite(path)
    ops = {n.op_type for n in onnx_model.graph.node}
    assert ("Tanh" if approximate else "Erf") in ops and "TFL_GELU" not in ops
    x = sample((6, 32), 1, 3)
    ref = model(x, training=False).numpy()
    got = run_model(onnx_model, {onnx_model.graph.input[0].name: x})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_tflite_sparse_weights_convert(tmp_path):
    """Weights the TFLite converter stored sparse (EXPERIMENTAL_SPARSITY: non-zero values,
    sparsity metadata and a DENSIFY op; MediaPipe's pose detector ships that way) made tf2onnx
    fail ("cannot reshape array of size ..."): they are densified from TFLite's own DENSIFY
    first, and the file is left as it was."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 8), name="image")
    hidden = keras.layers.Conv2D(32, 1, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(16, 3, padding="same")(hidden))
    rng = np.random.default_rng(1)
    for layer in model.layers[1:]:
        w, b = layer.get_weights()
        w[rng.random(w.shape) < 0.8] = 0.0  # pruned: sparse enough to be stored sparse
        layer.set_weights([w, b])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path = tmp_path / "sparse.tflite"
    path.write_bytes(converter.convert())
    before = path.read_bytes()
    from tensorflow.lite.tools import flatbuffer_utils

    tensors = flatbuffer_utils.read_model(str(path)).subgraphs[0].tensors
    assert any(t.sparsity is not None for t in tensors)  # the premise
    onnx_model = from_tflite(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    x = sample((12, 12, 8), 1, 4)
    ref = tflite_out(str(path), x)
    got = run_model(onnx_model, {onnx_model.graph.input[0].name: x})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_tflite_real_part_of_an_rfft_converts(tmp_path):
    """BirdNET's mel front end casts ``tf.signal.rfft``'s complex output to float (TensorFlow
    keeps the real part); tf2onnx converts TFLite's RFFT2D only before a ComplexAbs and left
    the model unconvertible. The real part is now a MatMul with the cosine basis; the
    magnitude path (ComplexAbs) converts as before."""

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 256], tf.float32)])
    def spectra(frames):
        real = tf.cast(tf.signal.rfft(frames), tf.float32)
        magnitude = tf.abs(tf.signal.rfft(frames * 0.5))
        return real, magnitude

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [spectra.get_concrete_function()], spectra)
    path = tmp_path / "rfft.tflite"
    path.write_bytes(converter.convert())
    onnx_model = from_tflite(path)
    x = sample((4, 256), 1, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    refs = [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
    got = run_model(onnx_model, {onnx_model.graph.input[0].name: x})
    assert len(refs) == len(got) == 2 and not np.allclose(refs[0], refs[1])
    tol = 1e-4 * max(np.abs(r).max() for r in refs)
    err = [[float(np.abs(g - r).max()) for g in got] for r in refs]
    assert max(err[0][0], err[1][1]) <= tol or max(err[0][1], err[1][0]) <= tol, err


def _one_node_model(op: str, elem_type: int):
    node = helper.make_node(op, ["x"], ["y"], name="n")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem_type, [2])],
                              [helper.make_tensor_value_info("y", elem_type, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_validation_names_ops_onnx_or_onnxruntime_lack():
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        validate_export(_one_node_model("NoSuchOp", TensorProto.FLOAT), "handmade")
    # a valid ONNX op without an onnxruntime CPU kernel for float64
    with pytest.raises(UnsupportedOpError, match=r"op\(s\) Erf "):
        validate_export(_one_node_model("Erf", TensorProto.DOUBLE), "handmade")
    validate_export(_one_node_model("Erf", TensorProto.FLOAT), "handmade")


# -- bad input -----------------------------------------------------------------------------
def test_bad_inputs(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelError):
        from_tflite(junk)
    with pytest.raises(ModelError, match="saved_model.pb"):
        from_saved_model(tmp_path)
    junk_keras = tmp_path / "junk.keras"
    junk_keras.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot load"):
        export_model(junk_keras)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(OnnxqError, match="input_signature"):
        from_keras(Subclassed())
    model = from_keras(Subclassed(), input_signature=[(None, 4)])
    assert [d.dim_param or d.dim_value for d in
            model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 4]


def test_tflite_export_prints_no_native_log_noise(artifacts, tmp_path):
    """TensorFlow's native banners (absl pre-init, oneDNN, CPU features, XNNPACK) used to fill
    stderr; a success prints nothing there and a failure exactly one line."""
    import subprocess
    import sys

    tflite = artifacts[next(iter(MODELS))]["tflite"]
    cli = [sys.executable, "-m", "onnxq.cli", "export"]
    ok = subprocess.run([*cli, str(tflite), str(tmp_path / "out.onnx"), ], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0 and ok.stderr.strip() == "", ok.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    fail = subprocess.run([*cli, str(bad), str(tmp_path / "bad.onnx")], capture_output=True,
                          text=True, timeout=300)
    assert fail.returncode == 2 and len(fail.stderr.strip().splitlines()) == 1, fail.stderr


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tflite_export_is_byte_identical_across_processes(artifacts, tmp_path, name):
    """tf2onnx names the constants it folds with a process-wide counter, and its folding order
    follows Python's string hashing: the same .tflite gave differently named constants in each
    process (BlazeFace: 70 of 75), so onnxq's output bytes changed from run to run. The
    generated names are now given by first use."""
    import os
    import subprocess
    import sys

    cli = [sys.executable, "-m", "onnxq.cli", "export", str(artifacts[name]["tflite"])]
    written = []
    for seed in ("1", "2"):
        out = tmp_path / f"{seed}.onnx"
        done = subprocess.run([*cli, str(out)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        written.append(out.read_bytes())
    assert written[0] == written[1]


def test_captured_constants_become_initializers_not_inputs():
    """A Keras 3 Normalization layer (the first layer of every Keras EfficientNet) holds its
    mean and variance as captured constants; tf2onnx makes them graph inputs, which no user
    feeds. The export freezes them, so the model has the image as its only input."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Normalization(mean=[0.485, 0.456, 0.406],
                                   variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2])(x)
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(x))
    onnx_model = from_keras(model)
    assert [i.name for i in onnx_model.graph.input] == [model.inputs[0].name]
    images = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    got = run_model(onnx_model, {onnx_model.graph.input[0].name: images})[0]
    assert np.allclose(got, model(images, training=False).numpy(), atol=1e-4)
    result = onnxq.quantize(onnx_model, [{onnx_model.graph.input[0].name: images[i:i + 1]}
                                         for i in range(3)], progress=False)
    assert result.report.quantized


def test_grouped_convolution_exports():
    """Keras 3 runs a grouped Conv2D (ConvNeXt's depthwise convs) through an XLA-compiled
    function on CPU, which TensorFlow's inliner skips: tf2onnx left a StatefulPartitionedCall
    in the graph and the model was refused. The exporter converts again with the calls made
    inlinable; names and outputs are as in any other export."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2)(inp)
    x = keras.layers.Activation("gelu")(x)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(x))
    onnx_model = from_keras(model, output_names=["features"])
    assert [v.name for v in onnx_model.graph.input] == ["image"]
    assert [v.name for v in onnx_model.graph.output] == ["features"]
    assert not {"StatefulPartitionedCall", "PartitionedCall"} & {
        n.op_type for n in onnx_model.graph.node}
    x = sample((8, 8, 4), 3, 7)
    ref = model(x, training=False).numpy()
    got = run_model(onnx_model, {"image": x})[0]
    assert np.abs(got - ref).max() <= REL_TOL * np.abs(ref).max()


def test_tflite_branch_reading_the_input_converts(tmp_path):
    """A TFLite ``IF`` whose branch reads the model's input (openWakeWord's hey_jarvis
    rescoring): renaming the input (``serving_default_x:0`` → ``x``) and tf2onnx's generated
    names has to reach into the branch, or the ONNX checker refuses the model."""
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.standard_normal((8, 4)).astype(np.float32))
    w2 = tf.constant(rng.standard_normal((8, 4)).astype(np.float32))

    class Rescore(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
        def __call__(self, x):
            first = tf.sigmoid(tf.matmul(x, w1))
            return tf.cond(first[0, 0] >= 0.5, lambda: tf.sigmoid(tf.matmul(x * 2.0, w2)),
                           lambda: first)

    module = Rescore()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    path = tmp_path / "rescore.tflite"
    path.write_bytes(converter.convert())
    onnx_model = from_tflite(path)
    assert "If" in {n.op_type for n in onnx_model.graph.node}
    for seed in range(6):
        x = sample((8,), 1, seed)
        ref = module(tf.constant(x)).numpy()
        got = run_model(onnx_model, {onnx_model.graph.input[0].name: x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_a_streaming_tflite_model_is_refused_with_its_cause(tmp_path):
    """A model that keeps state in resource variables between runs (micro-wakeword's
    streaming models: VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE): tf2onnx fails on it with an
    IndexError; the error names the cause and the fix instead of "check that it is a TFLite
    flatbuffer"."""

    class Streaming(tf.Module):
        def __init__(self):
            super().__init__()
            self.state = tf.Variable(tf.zeros([1, 4]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x):
            total = self.state + x
            self.state.assign(total)
            return total * 2.0

    module = Streaming()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    path = tmp_path / "streaming.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(ModelError, match=r"streaming TFLite model.*(VAR_HANDLE|READ_VARIABLE|"
                                         r"ASSIGN_VARIABLE).*fix: export the model without"):
        from_tflite(path)
