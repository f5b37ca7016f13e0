"""The Pass contract and the Pipeline that runs passes over one private copy of a model."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import onnx
import onnx_graphsurgeon as gs

from onnxq import graph as G
from onnxq.errors import OnnxqError, PassError
from onnxq.io import load_model
from onnxq.memory import LARGE_BYTES, release
from onnxq.scopes import tensor_bytes

__all__ = ["PassResult", "Pass", "PassRecord", "PipelineResult", "Pipeline", "ForEachGraph",
           "RewriteRule", "apply_rules"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PassResult:
    """What a pass returns. ``modified`` is exact: a second run of the pass returns False."""

    graph: gs.Graph
    modified: bool
    skipped: tuple[tuple[str, str], ...] = ()  # (node or tensor name, reason)
    notes: tuple[str, ...] = ()


@runtime_checkable
class Pass(Protocol):
    """A graph rewrite. Configuration goes to the constructor; ``run`` holds no state,
    does no file I/O and never runs onnxruntime."""

    @property
    def name(self) -> str: ...  # read-only, so frozen dataclass passes satisfy it

    def run(self, graph: gs.Graph) -> PassResult: ...


@dataclass(frozen=True, slots=True)
class ForEachGraph:
    """Runs a graph-local pass on the main graph and then on every subgraph (If branches,
    Loop and Scan bodies), outer scopes first: a rewrite in an outer graph may rewire readers
    inside its subgraphs (they can read outer tensors), never the reverse. Generated names
    stay unique across the whole model."""

    inner: Pass

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, graph: gs.Graph) -> PassResult:
        skipped: list[tuple[str, str]] = []
        notes: list[str] = []
        result = self.inner.run(graph)
        root = result.graph
        modified = result.modified
        skipped.extend(result.skipped)
        notes.extend(result.notes)
        pending = list(root.subgraphs())
        while pending:
            sub = pending.pop(0)
            G.share_names(root, sub)
            r = self.inner.run(sub)
            if r.graph is not sub:
                raise PassError(f"pass {self.name!r} replaced a subgraph instead of rewriting "
                                "it in place; it cannot run inside If/Loop/Scan bodies")
            modified |= r.modified
            skipped.extend(r.skipped)
            notes.extend(r.notes)
            pending.extend(sub.subgraphs())
        return PassResult(graph=root, modified=modified, skipped=tuple(skipped),
                          notes=tuple(notes))


@dataclass(frozen=True, slots=True, kw_only=True)
class PassRecord:
    name: str
    modified: bool
    seconds: float
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineResult:
    model: onnx.ModelProto
    records: tuple[PassRecord, ...] = field(default_factory=tuple)
    snapshots: tuple[tuple[str, onnx.ModelProto], ...] = ()

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        return tuple(item for r in self.records for item in r.skipped)


class Pipeline:
    """Runs passes in order over a private copy of the model; the input is never changed.

    ``debug=True`` runs the ONNX checker after every pass, so the pass that broke the
    graph is named; ``snapshots=True`` keeps the model after each pass (for notebooks).
    """

    def __init__(self, passes: Sequence[Pass], *, debug: bool = False,
                 snapshots: bool = False) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a Pass (needs .name and .run(graph))")
        self.passes = tuple(passes)
        self.debug = debug
        self.keep_snapshots = snapshots

    def run(self, model: onnx.ModelProto | str, *, copy: bool = True) -> PipelineResult:
        """Run every pass. ``copy=False`` lets the pipeline consume a ``ModelProto`` the caller
        no longer needs (saves one copy of the weights); paths are always loaded fresh."""
        loaded = load_model(model) if copy or not isinstance(model, onnx.ModelProto) \
            else model
        graph = G.import_graph(loaded)
        # the metadata export keeps: a pass that rebuilds the graph (transformer fusion) lets
        # the input's weights go, instead of this name holding them to the end
        template = G.header(loaded)
        large = sum(tensor_bytes(t) for t in loaded.graph.initializer) >= LARGE_BYTES
        del loaded
        records: list[PassRecord] = []
        snapshots: list[tuple[str, onnx.ModelProto]] = []
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p.run(graph)
            except OnnxqError as exc:
                if isinstance(exc, PassError):
                    raise
                raise type(exc)(f"{exc} (in pass {p.name!r})") from exc
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                done = [r.name for r in records]
                raise PassError(f"pass {p.name!r} failed after {done}: "
                                f"{type(exc).__name__}: {exc}") from exc
            rebuilt, graph = result.graph is not graph, result.graph
            if rebuilt and large:  # the old IR's cycles hold the weights it was built on
                release()
            records.append(PassRecord(name=p.name, modified=result.modified,
                                      seconds=time.perf_counter() - start,
                                      skipped=result.skipped, notes=result.notes))
            logger.debug("pass %s: modified=%s", p.name, result.modified)
            if self.debug or self.keep_snapshots:
                snap = G.export_graph(graph, template)
                if self.debug:
                    self._check(snap, p.name, records)
                if self.keep_snapshots:
                    snapshots.append((p.name, snap))
        exported = G.export_graph(graph, template)
        del graph, template  # release the input's weights before the caller continues
        release(exported)  # the IR is full of node <-> tensor cycles: free its arrays now
        return PipelineResult(model=exported, records=tuple(records), snapshots=tuple(snapshots))

    @staticmethod
    def _check(model: onnx.ModelProto, name: str, records: list[PassRecord]) -> None:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # noqa: BLE001
            done = [r.name for r in records[:-1]]
            raise PassError(f"pass {name!r} (after {done}) produced an invalid graph: "
                            f"{exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteRule:
    """One named rewrite of a rule-set pass: ``rewrite(graph, graph_output_names)`` rewrites
    every match in place and returns how many it rewrote. ``switch`` names the pass's boolean
    field that turns the rule off (None: always on)."""

    name: str
    rewrite: Callable[[gs.Graph, set[str]], int]
    switch: str | None = None


def apply_rules(rules: Sequence[RewriteRule], graph: gs.Graph, owner: object) -> dict[str, int]:
    """Apply ``rules`` in order (skipping those ``owner`` switched off); counts per rule."""
    outputs = {t.name for t in graph.outputs}
    return {r.name: r.rewrite(graph, outputs) for r in rules
            if r.switch is None or getattr(owner, r.switch)}
