"""The Markdown report (issue 17): pairs in the app tree's natural order, undefined figures as
"n/a", NaN/Inf per tensor and counted, rel L2 in percent as the app shows it."""

from __future__ import annotations

import json

import pytest
import torch

from weightscope.compare.results import ResultTable
from weightscope.report.export import export, markdown

# Every pair of the fixture below, in the order the app's tree shows them.
NATURAL = ["h.0.attn.weight", "h.0.ln_1.bias", "h.1.attn.weight", "h.1.ln_1.bias",
           "h.2.attn.weight", "h.2.extra", "h.2.ln_1.bias", "h.10.attn.weight", "h.10.extra", "h.10.ln_1.bias"]


@pytest.fixture
def report(ck, diff, tmp_path):
    """A fine-tune of GPT-2-like names, its Markdown and JSON exported. Biases are half
    precision, so safetensors stores them after the weights, and h.10 before h.2.

    h.0.attn.weight moved by 3%; h.1.ln_1.bias was all zeros (rel L2 undefined); B's
    h.2.attn.weight holds a NaN; h.2.extra and h.10.extra are only in A; the rest moved by 1.
    """
    gen = torch.Generator().manual_seed(0)
    a = {name: torch.randn(8, generator=gen).to(torch.float16 if "bias" in name else torch.float32)
         for name in NATURAL}
    a["h.1.ln_1.bias"] = torch.zeros(8, dtype=torch.float16)
    b = {name: t + 1 for name, t in a.items() if "extra" not in name}
    b["h.0.attn.weight"] = a["h.0.attn.weight"] * 1.03
    b["h.2.attn.weight"][3] = float("nan")
    d = diff(ck.write_safetensors(tmp_path / "a.safetensors", a), ck.write_safetensors(tmp_path / "b.safetensors", b))
    assert list(d.catalog.names) != NATURAL  # the files' own order is not the one wanted
    md, js = export(d.catalog, d.table, tmp_path)
    return d, md.read_text(), json.loads(js.read_text())


def cells(line: str) -> list[str]:
    """A Markdown table row's cells (a bar escaped as \\| stays inside its cell)."""
    return [cell.strip().replace("\0", "|") for cell in line.replace("\\|", "\0").strip("|").split("|")]


def rows(text: str) -> dict[str, list[str]]:
    """The "Tensors that differ" table: name -> the row's cells, in the order listed."""
    table = text.split("## Tensors that differ")[1].strip().splitlines()
    return {cells(line)[0].strip("`"): cells(line) for line in table[2:]}


def test_pairs_listed_in_natural_order(report):
    _, text, document = report
    assert list(rows(text)) == NATURAL
    assert [t["name"] for t in document["tensors"]] == NATURAL
    gone = [line for line in text.splitlines() if line.endswith(": only in A")]
    assert gone == ["- `h.2.extra`: only in A", "- `h.10.extra`: only in A"]


def test_no_cell_is_blank(report):
    """An undefined figure reads n/a: rel L2 of a tensor that was all zeros (max |Δ| is still
    defined), every figure of a tensor on one side only."""
    _, text, _ = report
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert table_lines and all(all(cells(line)) for line in table_lines)
    header = cells(text.split("## Tensors that differ")[1].strip().splitlines()[0])
    listed = {name: dict(zip(header, row)) for name, row in rows(text).items()}
    zeros = listed["h.1.ln_1.bias"]
    assert zeros["rel L2 (%)"] == "n/a" and float(zeros["max |Δ|"]) == pytest.approx(1)
    only = listed["h.2.extra"]
    assert (only["status"], only["rel L2 (%)"], only["max |Δ|"], only["cosine"]) == ("only_a", "n/a", "n/a", "n/a")


def test_nonfinite_column_and_count(report):
    _, text, _ = report
    header = cells(text.split("## Tensors that differ")[1].strip().splitlines()[0])
    assert header[-1] == "NaN/Inf"
    listed = rows(text)
    assert listed["h.2.attn.weight"][-1] == "0 → 1 NaN"
    assert listed["h.10.attn.weight"][-1] == "0"  # counted on both sides: none
    assert "| with NaN/Inf (among the above) | 1 |" in text.splitlines()


def test_rel_l2_in_percent_here_a_fraction_in_json(report):
    _, text, document = report
    assert "| rel L2 (%) |" in text
    assert rows(text)["h.0.attn.weight"][4] == "3%"
    moved = next(t for t in document["tensors"] if t["name"] == "h.0.attn.weight")
    assert moved["diff"]["rel_l2"] == pytest.approx(0.03, rel=1e-4)


def test_before_anything_is_read(report):
    """A report made before any result says how much is missing, and counts no NaN/Inf yet."""
    d, _, _ = report
    text = markdown(d.catalog, ResultTable(len(d.catalog)))
    assert f"**partial: 0 of {len(NATURAL)} tensors read**" in text
    assert f"| not read yet | {len(NATURAL)} |" in text and "NaN/Inf" not in text
