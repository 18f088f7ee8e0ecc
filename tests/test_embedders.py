"""llmedge.embedders.SentenceTransformerEmbedder, with a fake sentence_transformers.

No model can be downloaded in the tests, so a stand-in module is injected into
sys.modules; it records how the adapter calls it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest


class FakeModel:
    instances: list[FakeModel] = []

    def __init__(self, name, device=None):
        self.name = name
        self.device = device
        self.calls: list[dict] = []
        FakeModel.instances.append(self)

    def get_sentence_embedding_dimension(self):
        return 4

    def encode(self, texts, batch_size, normalize_embeddings, convert_to_numpy, show_progress_bar):
        self.calls.append(
            {"texts": list(texts), "batch_size": batch_size, "normalize": normalize_embeddings}
        )
        out = np.array([[len(t), 1.0, 0.0, 2.0] for t in texts], dtype=np.float64)
        if normalize_embeddings:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


@pytest.fixture
def fake_st(monkeypatch):
    module = types.ModuleType("sentence_transformers")
    module.SentenceTransformer = FakeModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)
    FakeModel.instances.clear()
    return module


def test_importing_llmedge_does_not_import_the_adapter():
    import llmedge  # noqa: F401

    code = "import llmedge, sys; print('llmedge.embedders' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_dependency_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    from llmedge.embedders import SentenceTransformerEmbedder

    with pytest.raises(ImportError, match=r"pip install 'llmedge\[sentence-transformers\]'"):
        SentenceTransformerEmbedder("all-MiniLM-L6-v2")


def test_embeds_to_float32_rows(fake_st):
    from llmedge.embedders import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder("some/model", device="cpu", batch_size=8)
    model = FakeModel.instances[-1]
    assert model.name == "some/model" and model.device == "cpu"
    out = e(["a", "abc"])
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert model.calls[-1] == {"texts": ["a", "abc"], "batch_size": 8, "normalize": True}
    assert e.dim == 4
    assert e.identity == "sentence-transformers/some/model/dim=4/normalized"
    assert repr(e) == (
        "SentenceTransformerEmbedder('some/model', device='cpu', normalize=True, "
        "batch_size=8, dim=4)"
    )
    assert e([]).shape == (0, 4)


def test_normalize_false_changes_identity_and_output(fake_st):
    from llmedge.embedders import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder("m", normalize=False)
    assert e.identity == "sentence-transformers/m/dim=4/raw"
    assert e(["abc"])[0].tolist() == [3.0, 1.0, 0.0, 2.0]


def test_bad_input(fake_st):
    from llmedge.embedders import SentenceTransformerEmbedder

    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        SentenceTransformerEmbedder("m", batch_size=0)
    with pytest.raises(ValueError, match="model_name_or_path"):
        SentenceTransformerEmbedder("")
    e = SentenceTransformerEmbedder("m")
    with pytest.raises(TypeError, match="single str"):
        e("text")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        e(["a", 1])
    assert FakeModel.instances[-1].calls == []
