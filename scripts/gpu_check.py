"""Checks that need the GPU machine's packages (CUDA, real torchvision/timm), run there as one script.

    python scripts/gpu_check.py OUT_DIR

1. lightcl's torchvision-keyed families against REAL torchvision: the state dict of ``torchvision.models.X()``
   loads strictly into ``create_torchvision_model(tv_X)``, and eval-mode outputs match on random inputs
   (BN running statistics randomised first, so BN is not the identity).
2. Any-module intake on real torchvision / timm models (``export_module``), when that API exists.
Writes OUT_DIR/gpu_check.json; prints one line per check. Exit 1 when a check fails.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def randomise_bn(m: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


def check_torchvision(results: list) -> None:
    import torchvision

    from lightcl.export.torchvision_models import create_torchvision_model, list_torchvision_models

    for name in list_torchvision_models():
        tv_name = name[len("tv_"):]
        t0 = time.perf_counter()
        ref = getattr(torchvision.models, tv_name)(weights=None).eval()
        randomise_bn(ref)
        ours = create_torchvision_model(name).eval()
        sd = ref.state_dict()
        missing, unexpected = [], []
        try:
            ours.load_state_dict(sd, strict=True)
            loaded = True
        except RuntimeError as e:
            loaded, msg = False, str(e)[:300]
        row = {"check": "torchvision", "model": name, "torchvision": torchvision.__version__, "strict_load": loaded,
               "n_keys_ref": len(sd), "n_keys_ours": len(ours.state_dict())}
        if loaded:
            diffs = []
            for shape in [(2, 3, 224, 224), (2, 3, 96, 128)]:
                x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    diffs.append(float((ref(x) - ours(x)).abs().max()))
            row["max_abs_diff"] = max(diffs)
            row["passed"] = row["max_abs_diff"] <= 1e-4
        else:
            row["error"], row["passed"] = msg, False
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)


def check_any_module(results: list, out: Path) -> None:
    """Real torchvision and timm model OBJECTS (not lightcl's restatements) through ``export_module``; the export's
    logits equal the model's; LightCL learns on it with the ort backend (CPU) and the torch backend on CUDA."""
    import torchvision

    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL
    from lightcl.export.intake import export_module

    cases = [("torchvision.resnet18", lambda: torchvision.models.resnet18(weights=None), "layer3", "fc"),
             ("torchvision.mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small(weights=None),
              "features.8", "classifier.3")]
    try:
        import timm

        cases.append(("timm.resnet18", lambda: timm.create_model("resnet18", pretrained=False), "layer3", "fc"))
        cases.append(("timm.mobilenetv3_small_100",
                      lambda: timm.create_model("mobilenetv3_small_100", pretrained=False), "blocks.3", "classifier"))
    except ImportError:
        results.append({"check": "timm", "passed": True, "skipped": "timm not importable"})
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (12, 3, 240, 320), dtype=torch.uint8, generator=g)
    for name, build, split, classifier in cases:
        row = {"check": "any-module", "model": name, "split": split, "classifier": classifier}
        t0 = time.perf_counter()
        try:
            model = build().eval()
            randomise_bn(model)
            d = Path(tempfile.mkdtemp(prefix="lightcl-gpu-")) / f"exp-{name}"
            export_module(model, d, split=split, classifier=classifier, input_shape=(3, 224, 224),
                          mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], images=raw, progress=False)
            x = torch.randn(4, 3, 224, 224, generator=g)
            with torch.no_grad():
                want = model(x)
                for backend, device in (("ort", "cpu"), ("torch", "cuda")):
                    ext = load_extractor(d, backend, device=device)
                    head = load_head(d).to(device).eval()
                    got = head(ext(x.to(device))).cpu()
                    row[f"{backend}_{device}_max_abs_diff"] = float((got - want).abs().max())
            for backend, device in (("ort", "cpu"), ("torch", "cuda")):
                ext = load_extractor(d, backend, device=device)
                cl = LightCL(ext, load_head(d), num_classes=None, device=device)
                cl.begin_task(0, ["cup", "ball"], x, ["cup", "ball", "cup", "ball"])
                loss = [cl.observe(x, ["cup", "ball", "cup", "ball"])["loss"] for _ in range(2)]
                cl.end_task(x)
                row[f"{backend}_{device}_losses"] = loss
            scale = max(1.0, float(want.abs().max()))
            row["passed"] = all(row[k] <= 1e-3 * scale for k in row if k.endswith("max_abs_diff"))
        except Exception as e:  # noqa: BLE001 - one row per failure, the script goes on
            row["error"], row["passed"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}", False
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    results: list = []
    torch.set_num_threads(8)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32
    check_torchvision(results)
    check_any_module(results, out)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    bad = [r for r in results if not r.get("passed")]
    print(f"{len(results) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
