"""The design holds itself: file and function size caps, the layer table (a module imports only
its own layer or lower, lazy imports included), and onnxruntime/torch/tensorflow only where they
belong. See docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxq"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

#: module (dotted, relative to onnxq; a package name covers its modules) → layer
LAYERS = {
    "errors": 0, "qtypes": 0, "quant_math": 0, "kernels": 0, "calibrators": 0, "config": 0,
    "scopes": 0, "observe": 0, "distributed": 1, "plan_weights": 2, "plan_roots": 1, "plan_settle": 2, "sizes": 1, "report": 0, "large_constants": 0, "external": 0, "memory": 0, "dynamic_check": 3, "loop_check": 3,
    "graph": 1, "graph_import": 1, "graph_shapes": 1, "io": 1, "raw_data": 1, "outputs": 1, "runtime": 1, "data": 1,
    "pipeline": 2, "quant_ops": 2, "plan": 2, "exporters": 2,
    "passes": 3, "calibrate": 3, "placement": 3,
    "score_types": 4, "score_names": 3, "score": 4, "score_render": 4, "report_html": 4, "emulate": 4, "tune_types": 4,
    "api": 5, "range_choice": 5, "self_check": 5, "ep_check": 5, "calibration_run": 5, "recovery": 4, "plan_checks": 2, "plan_concat": 2, "plan_bounds": 2, "plan_fusions": 1, "plan_dynamic": 2, "config_resolve": 1,
    "tune": 6, "tune_recovery": 6, "tune_runner": 4, "tune_latency": 6, "tune_mode": 6, "compat": 6,
    "cli": 7, "cli_score": 7, "ep": 4, "ep_child": 1, "cli_tune": 7, "cli_zoo": 7, "zoo": 6, "cli_profile": 7, "profile": 4, "__init__": 7,
}
#: third-party engines → the only onnxq modules that may import them
CONFINED = {"onnxruntime": ("runtime", "ep_child"), "ray": ("distributed",), "torch": ("exporters",), "tensorflow": ("exporters",),
            "tf2onnx": ("exporters",)}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _layer(module: str) -> int:
    for key in (module, module.split(".")[0]):
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"module {module!r} has no layer in LAYERS; add it")


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def _imports(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """(imported onnxq module or third-party top name, line) for every import, lazy ones too."""
    found = []
    package = module.split(".")[:-1] if module.count(".") else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(["onnxq", *package[: len(package) - node.level + 1], base])
            if base == "onnxq":  # a submodule, or a name defined in onnxq/__init__.py
                found += [(f"onnxq.{a.name}" if _is_module(a.name) else "onnxq.__init__",
                           node.lineno) for a in node.names]
            else:
                found.append((base, node.lineno))
    return found


def test_files_and_functions_are_small():
    too_long, long_functions = [], []
    for module, path in _modules():
        source = path.read_text()
        if source.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, f"files over {MAX_FILE_LINES} lines: {too_long}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_imports_follow_the_layer_table():
    violations = []
    for module, path in _modules():
        mine = _layer(module)
        for name, line in _imports(ast.parse(path.read_text()), module):
            if name.startswith("onnxq."):
                target = name[len("onnxq."):]
                if _layer(target) > mine:
                    violations.append(f"{module} (layer {mine}) imports {target} "
                                      f"(layer {_layer(target)}) at line {line}")
            top = name.split(".")[0]
            if top in CONFINED and module.split(".")[0] not in CONFINED[top]:
                violations.append(f"{module} imports {top} at line {line}; only "
                                  f"{CONFINED[top]} may")
    assert not violations, "\n".join(violations)


def test_every_module_has_a_layer_and_public_modules_define_all():
    missing_all = []
    for module, path in _modules():
        _layer(module)
        tree = ast.parse(path.read_text())
        public = module != "__init__" and not any(p.startswith("_") for p in module.split("."))
        targets = [t for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
        targets += [n.target for n in tree.body if isinstance(n, ast.AnnAssign)]
        has_all = any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
        if public and not has_all:
            missing_all.append(module)
    assert not missing_all, f"public modules without __all__: {missing_all}"
