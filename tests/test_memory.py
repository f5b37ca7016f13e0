"""What ``quantize`` still holds when its self-check starts its onnxruntime sessions: the INT8
candidates, not the float weights. Measured in a child process (RSS), on a model given by path
with 256 MB of float weights. Two ways they stayed before (BERT-base static: 1446 → 1139 MiB
peak): protobuf's upb runtime keeps a cleared field's bytes until the message itself goes (the
self-check's weightless skeleton held the whole file; the prepared model, cleared after its
last build, stayed whole), and the build closure kept the prepared model alive."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

K, N, LAYERS = 4096, 4096, 4  # 4 x 64 MB of float32 weights

_CHILD = """
import sys, numpy as np, onnxq
from onnxq import self_check
from onnxq.memory import release

def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmRSS")) * 1024

seen = []
real = self_check.check
def spy(*args, **kwargs):  # what is held, not the allocator's free blocks
    release()
    seen.append(rss())
    return real(*args, **kwargs)
self_check.check = spy
rng = np.random.default_rng(0)
feeds = [{"x": rng.standard_normal((4, int(sys.argv[2]))).astype(np.float32)} for _ in range(4)]
release()
before = rss()
result = onnxq.quantize(sys.argv[1], feeds, progress=False)
assert seen and result.report.self_check and "outputs" in result.report.self_check
print("HELD", seen[0] - before)
"""


def _chain(tmp_path) -> tuple[str, int]:
    """A MatMul chain with ``LAYERS`` float weights, saved: its path and its weight bytes."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((K, N), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, K])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [4, N])],
                              inits)
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path), LAYERS * K * N * 4


def test_the_self_check_starts_without_the_float_weights(tmp_path):
    path, weights = _chain(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _CHILD, path, str(K)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = int(proc.stdout.split("HELD")[1])
    print(f"held at the self-check: {held / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB of "
          "float weights")
    # the two INT8 candidates (min/max and percentile, a quarter of the weights each) and the
    # allocator's slack; the float weights (a whole copy) would be over 1.0x
    assert held < 0.75 * weights


_PIPELINE_CHILD = """
import sys
import onnxq.graph as G
from onnxq.memory import release
from onnxq.pipeline import Pipeline, PassResult

def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmRSS")) * 1024

class Rebuild:  # what transformer fusion does: the graph exported, rewritten, imported again
    name = "rebuild"
    def run(self, graph):
        return PassResult(graph=G.import_graph(G.export_graph(graph)), modified=True)

class Probe:
    name = "probe"
    seen = []
    def run(self, graph):
        release()
        self.seen.append(rss())
        return PassResult(graph=graph, modified=False)

release()
before = rss()
probe = Probe()
Pipeline([Rebuild(), probe]).run(sys.argv[1])
print("HELD", probe.seen[0] - before)
"""


def test_a_rebuilt_graph_lets_the_input_weights_go(tmp_path):
    """A pass that rebuilds the graph from an exported copy (``TransformerFusionPass``): the
    pipeline then holds one copy of the weights, not the loaded input's beside it (BERT-base
    ``--fuse-attention``: quantize peak 1418 → 1093 MiB with this)."""
    path, weights = _chain(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _PIPELINE_CHILD, str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held = int(proc.stdout.split("HELD")[1])
    print(f"held after the rebuild: {held / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB")
    assert held < 1.5 * weights
