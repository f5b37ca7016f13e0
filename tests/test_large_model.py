"""A model over 2 GiB (two ~1.1 GB weights in external data) quantizes and saves end to end,
in a child process whose peak memory is measured. Heavy (2.3 GB on disk, ~20 s, ~3 GB RSS):
runs with ``make test-large`` (ONNXQ_LARGE_TESTS=1), skipped otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.skipif(os.environ.get("ONNXQ_LARGE_TESTS") != "1",
                                reason="heavy: set ONNXQ_LARGE_TESTS=1 (make test-large)")

K, N = 16384, 17000  # 2 x ~1.1 GB of float32 weights

_CHILD = """
import sys, numpy as np, onnx, onnxq
K = int(sys.argv[3])
feeds = [{"x": np.random.default_rng(0).uniform(0, 1, (1, K)).astype(np.float32)}
         for _ in range(2)]
result = onnxq.quantize(sys.argv[1], feeds, progress=False)
result.save(sys.argv[2])
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's RSS)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM"))
print("RSS_GB", hwm / 1e6)
"""


def test_model_over_2_gib_end_to_end(tmp_path):
    w1 = np.zeros((K, N), np.float32)
    w1[::97, ::89] = 0.01
    w2 = np.zeros((N, N), np.float32)
    w2[::89, ::97] = 0.01
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    del w1, w2
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "big.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="big.data")
    del model, graph
    assert (tmp_path / "big.data").stat().st_size > 2**31
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "big.onnx"),
                           str(tmp_path / "q.onnx"), str(K)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = float(proc.stdout.split("RSS_GB")[1])
    size = (tmp_path / "big.data").stat().st_size / 1e9
    print(f"peak RSS {rss:.1f} GB for a {size:.2f} GB model")
    # measured 2.6 GB for 2.27 GB (1.15x; 2.9 GB before the checker took large weights as
    # typed inputs, 5.1 GB = 2.25x before the weights stayed in their
    # file, 9.6 GB = 4.2x before blockwise quantization): onnxruntime's calibration session
    # holds the float weights once; onnxq reads them through a memory map and writes int8
    assert rss < 1.5 * size
    quantized = onnx.load(str(tmp_path / "q.onnx"), load_external_data=False)
    assert {n.op_type for n in quantized.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
