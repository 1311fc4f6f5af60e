"""The pipeline's two registries: every source and every format is reachable through them."""

from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import audit
from argmaxcheck.report.formats import FORMATS
from argmaxcheck.report.gate import evaluate
from argmaxcheck.sources import SOURCES, SourceRequest, load_source

ROOT = Path(__file__).resolve().parents[1]


def test_sources_are_picked_by_the_registry(tmp_path):
    np.savez(tmp_path / "m.npz", weight=np.eye(3))
    picked = {s.name: s.matches(p) for s in SOURCES for p in [tmp_path / "m.npz"]}
    assert picked == {"huggingface": False, "onnx": False, "gguf": False, "hub": False, "arrays": True}
    assert [s.name for s in SOURCES if s.matches(ROOT / "data" / "tiny-gpt2")] == ["huggingface"]
    folder = load_source(ROOT / "data" / "tiny-gpt2")
    assert folder.norm == "layernorm" and "LayerNorm" in folder.domain_reason and folder.raw is not None
    plain = load_source(tmp_path / "m.npz")
    assert plain.info == {} and plain.layer is plain.raw and plain.domain_reason.startswith("R^d")
    folded = load_source(ROOT / "data" / "ppocrv4_rec_head.npz", SourceRequest(no_bias=True))
    assert folded.layer.bias is None


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_renders_the_same_gate(name):
    layer = load_source(ROOT / "data" / "tiny-gpt2")
    report = audit(layer.layer, domain=layer.domain)
    gate = evaluate(report)
    text = FORMATS[name](report, gate, layer.layer)
    assert isinstance(text, str) and text.endswith("\n")
