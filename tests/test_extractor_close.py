"""Extractors release their runtime: ``close()`` and ``with load_extractor(...) as ex:`` (Polygraphy's
activate/deactivate), on real onnxruntime and torch sessions of the digits export."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lightcl.engine.errors import StateError
from lightcl.engine.extractors import load_extractor

BACKENDS = {"ort": "session", "torch": "net"}  # backend -> the attribute holding its runtime object


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_close_releases_the_session_and_refuses_later_calls(digits_export, backend):
    x = torch.zeros(2, *load_extractor(digits_export, backend="torch").input_shape)
    with load_extractor(digits_export, backend=backend, threads=1) as ex:
        assert not ex.closed
        feats = ex(x)
        assert feats.shape == (2, *ex.feature_shape)
        held = weakref.ref(getattr(ex, BACKENDS[backend]))
    assert ex.closed and getattr(ex, BACKENDS[backend]) is None
    gc.collect()
    assert held() is None, f"the {backend} runtime object is still referenced after close()"
    with pytest.raises(StateError, match="is closed: load it again"):
        ex(x)
    ex.close()  # idempotent
    with pytest.raises(StateError, match="is closed"):
        with ex:
            pass
    assert ex.info()["backend"] == backend  # describing a closed extractor still works


def test_close_on_an_exception_and_a_fresh_load_works(digits_export):
    with pytest.raises(RuntimeError, match="boom"):
        with load_extractor(digits_export, backend="ort", threads=1) as ex:
            raise RuntimeError("boom")
    assert ex.closed
    again = load_extractor(digits_export, backend="ort", threads=1)
    x = torch.zeros(1, *again.input_shape)
    assert torch.isfinite(again(x)).all()
    again.close()
