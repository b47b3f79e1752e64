"""Answers the engine works out from the catalog and the results so far, in a thread of its own."""

from __future__ import annotations

from weightscope.compare.catalog import Catalog
from weightscope.compare.results import ResultTable
from weightscope.engine.protocol import Ask
from weightscope.engine.worker import fault


def answer(request: Ask, catalog: Catalog, table: ResultTable) -> object:
    from weightscope.analysis import anatomy, hierarchy

    fault("filter" if request.kind == "tree" else request.kind)

    if request.kind == "tree":
        (pattern,) = request.args
        return hierarchy.build(catalog, pattern)
    if request.kind == "overview":
        return anatomy.grid(catalog, table)
    if request.kind == "anomalies":
        return anatomy.anomalies(catalog, table)
    if request.kind == "export":
        from weightscope.report.export import export

        (directory,) = request.args
        return tuple(str(p) for p in export(catalog, table, directory))
    raise ValueError(f"no such question: {request.kind}")
