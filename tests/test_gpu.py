"""The CUDA paths, run where a GPU exists (``pytest -m gpu``); skipped on CPU-only machines and in CI.

What these exercise: the torch extractor and the learner on a CUDA device against the same computation on
the CPU, a CUDA-learned state reopened on the CPU, and onnxruntime's CUDA execution provider where the
installed onnxruntime has one (the provider that *really* runs, from the session, never the available list).
TensorRT is not covered here (not installable on the machines this project is tested on).
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    """CUDA convolutions default to TF32 (10-bit mantissa): compare fp32 with fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _batch(n: int, shape, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_torch_extractor_on_cuda_matches_cpu(digits_export):
    from lightcl.engine.extractors import load_extractor

    cpu = load_extractor(digits_export, "torch", device="cpu")
    gpu = load_extractor(digits_export, "torch", device="cuda")
    x, _ = _batch(8, cpu.meta["input_shape"])
    a, b = cpu(x), gpu(x)
    assert b.device.type == "cuda"
    assert torch.allclose(a, b.cpu(), atol=1e-4, rtol=1e-4), float((a - b.cpu()).abs().max())
    assert gpu.info()["device"].startswith("cuda")


def test_learner_on_cuda_follows_the_cpu_learner(digits_export, tmp_path):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    runs = {}
    for dev in ("cpu", "cuda"):
        ext = load_extractor(digits_export, "torch", device=dev)
        cl = LightCL(ext, load_head(digits_export), num_classes=4, device=dev, seed=0)
        cl.begin_task(0, [0, 1], *_batch(32, ext.meta["input_shape"], 1))
        losses = [cl.observe(*_batch(32, ext.meta["input_shape"], 2 + i))["loss"] for i in range(3)]
        cl.end_task(_batch(32, ext.meta["input_shape"], 9)[0])
        runs[dev] = (losses, cl)
    (lc, _), (lg, clg) = runs["cpu"], runs["cuda"]
    assert all(abs(a - b) < 1e-3 * max(1.0, abs(a)) for a, b in zip(lc, lg)), (lc, lg)
    clg.save(tmp_path / "st")
    ext = load_extractor(digits_export, "torch", device="cpu")
    back = LightCL.load(tmp_path / "st", ext, device="cpu")
    x, _ = _batch(16, ext.meta["input_shape"], 5)
    assert torch.equal(back.predict(x), clg.predict(x.cuda()).cpu())


def test_ort_cuda_provider_really_runs(digits_export):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime ({ort.__version__}) has no CUDA execution provider")
    from lightcl.engine.extractors import load_extractor

    cpu = load_extractor(digits_export, "ort", device="cpu")
    gpu = load_extractor(digits_export, "ort", device="cuda")
    assert "CUDA" in str(gpu.info().get("provider")), gpu.info()
    x, _ = _batch(8, cpu.meta["input_shape"])
    assert torch.allclose(cpu(x), gpu(x).cpu(), atol=1e-3, rtol=1e-3)
