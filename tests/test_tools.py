"""The thin scripts in tools/ run on a small model (so they cannot rot)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx

import onnxq
from tests import builders as B

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _models(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = B.residual_block()
    feeds = B.feeds(model, batch=2, n=3, seed=1)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, fp32)
    onnxq.quantize(model, feeds, progress=False, target="portable").save(int8)
    np.savez(tmp_path / "data.npz", **feeds[0])
    return fp32, int8, tmp_path / "data.npz"


def test_profile_model_two_models(tmp_path, capsys):
    fp32, int8, data = _models(tmp_path)
    out, png = tmp_path / "profile.json", tmp_path / "profile.png"
    assert _tool("profile_model").main([str(fp32), str(int8), "--data", str(data), "--batch",
                                        "2", "--runs", "3", "--json", str(out), "--plot",
                                        str(png)]) == 0
    text = capsys.readouterr().out
    assert "Conv" in text and "total" in text
    figures = json.loads(out.read_text())
    assert any(op.startswith("QLinear") for op in figures["op_types_us"]["int8"])
    regions = {r["region"]: r for r in figures["regions"]}
    assert sum(r["fp32_us"] > 0 and r["int8_us"] > 0 for r in regions.values()) >= 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_diff_and_ort_graph(tmp_path, capsys):
    fp32, int8, _ = _models(tmp_path)
    assert _tool("model_diff").main([str(fp32), str(int8)]) == 0
    text = capsys.readouterr().out
    assert "QuantizeLinear" in text and "portable" in text
    assert _tool("ort_graph").main([str(int8), "--save", str(tmp_path / "opt.onnx")]) == 0
    text = capsys.readouterr().out
    assert "QLinearConv" in text and "leftover Q/DQ" in text and (tmp_path / "opt.onnx").exists()


def test_command_pages_match_the_cli():
    """docs/commands/*.md are generated from the parser; regenerate after changing a flag."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "tools" / "cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _add_to_table(tmp_path, name: str, *args: str) -> tuple[dict, dict]:
    """A copy of the shipped table ``name`` before and after ``tools/cost_table.py`` added to
    it (one quick repeat)."""
    from onnxq.placement import costs

    shipped = json.loads((costs._TABLES / f"{name}.json").read_text())
    table = tmp_path / f"{name}.json"
    table.write_text(json.dumps(shipped))
    flag, *rest = args
    assert _tool("cost_table").main([flag, str(table), *rest, "--repeats", "1", "--seconds",
                                     "0.01", "--threads", "1"]) == 0
    return shipped, json.loads(table.read_text())


def _rest(table: dict, *keys: str) -> dict:
    return {k: v for k, v in table.items() if k not in ("meta", *keys)}


def test_cost_table_adds_node_costs_to_a_table_and_keeps_the_rest(tmp_path, capsys):
    from onnxq.placement import measure

    shipped, found = _add_to_table(tmp_path, "vnni", "--node-costs-into")
    assert set(found["node_us"]) == set(measure.NODE_OPS)
    assert all(v > 0 for v in found["node_us"].values())
    assert _rest(found, "node_us") == _rest(shipped, "node_us")
    assert "node_us" in found["meta"] and "wrote node_us" in capsys.readouterr().out


def test_cost_table_adds_one_conv_kind_to_a_table_and_keeps_the_rest(tmp_path, capsys):
    shipped, found = _add_to_table(tmp_path, "avx2", "--conv-kind-into", "dense3.nd")
    rates = found["conv_us_per_mmac"].pop("dense3.nd")
    assert [c for c, _ in rates["int8"]] == [3, 8, 16, 32, 64, 128, 256]
    assert all(r > 0 for dtype in ("float", "int8") for _, r in rates[dtype])
    assert _rest(found) == _rest(shipped)
    assert "dense3.nd" in found["meta"] and "wrote dense3.nd" in capsys.readouterr().out
    assert _tool("cost_table").main(["--conv-kind-into", str(tmp_path / "avx2.json"),
                                     "dense9"]) == 2


def test_cost_table_adds_the_nhwc_broadcast_costs_and_keeps_the_rest(tmp_path, capsys):
    from onnxq.placement import measure

    shipped, found = _add_to_table(tmp_path, "avx2", "--bcast-into")
    rates = found.pop("bcast_nhwc_ns")
    assert set(rates) == set(measure.BCAST_OPS)
    assert all(r > 0 for points in rates.values() for _, r in points)
    assert _rest(found) == _rest(shipped)
    assert "wrote bcast_nhwc_ns" in capsys.readouterr().out
