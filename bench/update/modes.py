"""The modes of ``lightcl bench update``: what each one builds (extractor backend, dense or pruned export, learner
and extractor options), the process environment it runs in, and the checks on a request before any worker starts."""
from __future__ import annotations

import os
from pathlib import Path

MODES = ("lightcl", "lightcl-torch", "lightcl-reference", "finetune", "lightcl-int8", "lightcl-sparse",
         "lightcl-sparse-int8", "lightcl-plain", "lightcl-noarena", "lightcl-lean", "lightcl-lean-plain",
         "lightcl-sparse-lean", "finetune-lean", "lightcl-system", "lightcl-sparse-system", "lightcl-int8-system",
         "lightcl-whole", "lightcl-int8-whole", "lightcl-int8-lean", "lightcl-overlap", "lightcl-int8-overlap")
DEFAULT_MODES = MODES[:4]


# The onnxruntime options of a *learning* extractor: no CPU memory arena (the arena keeps the largest run's
# buffers for the life of the session; measured in docs/results/ledger.md). Passed explicitly here until the
# ort backend takes it as its learning default.
LEARNING_ORT = {"arena": False}
# the engine before its lean defaults: onnxruntime's arena on, glibc's own malloc behaviour (LIGHTCL_MALLOC=system)
SYSTEM_ORT = {"arena": True}

# mode -> (extractor backend, which export, learner options, extractor options)
ENGINE_MODES: dict[str, tuple[str, str, dict, dict]] = {
    "lightcl": ("ort", "dense", {}, LEARNING_ORT),
    "lightcl-system": ("ort", "dense", {}, SYSTEM_ORT),
    "lightcl-plain": ("ort", "dense", {"optimizer_step": "plain"}, LEARNING_ORT),
    "lightcl-noarena": ("ort", "dense", {}, {"arena": False}),
    "lightcl-lean": ("ort", "dense", {}, {"arena": False}),
    "lightcl-lean-plain": ("ort", "dense", {"optimizer_step": "plain"}, {"arena": False}),
    "lightcl-torch": ("torch", "dense", {}, {}),
    "lightcl-int8": ("ort-int8", "dense", {}, LEARNING_ORT),
    "lightcl-int8-system": ("ort-int8", "dense", {}, SYSTEM_ORT),
    "lightcl-sparse": ("ort", "sparse", {}, LEARNING_ORT),
    "lightcl-sparse-system": ("ort", "sparse", {}, SYSTEM_ORT),
    "lightcl-sparse-lean": ("ort", "sparse", {}, {"arena": False}),
    "lightcl-sparse-int8": ("ort-int8", "sparse", {}, LEARNING_ORT),
    # the engine before micro-batched extraction (engine/microbatch.py): whole batches through the frozen part
    "lightcl-whole": ("ort", "dense", {"extract_budget": None}, LEARNING_ORT),
    "lightcl-int8-whole": ("ort-int8", "dense", {"extract_budget": None}, LEARNING_ORT),
    "lightcl-int8-lean": ("ort-int8", "dense", {}, {"arena": False}),
    # extraction of the next batch overlapped with the head's step (engine/prefetch.py): onnxruntime 1 thread,
    # torch the other cores (OVERLAP_THREADS)
    "lightcl-overlap": ("ort", "dense", {}, {**LEARNING_ORT, "threads": 1}),
    "lightcl-int8-overlap": ("ort-int8", "dense", {}, {**LEARNING_ORT, "threads": 1}),
}
OVERLAP_MODES = ("lightcl-overlap", "lightcl-int8-overlap")


def overlap_threads() -> "tuple[int, int]":
    """(onnxruntime, torch) threads of an overlapped step: one core extracts, the others train the head."""
    n = os.cpu_count() or 1
    return 1, max(1, n - 1)


# glibc malloc for a lean process set from the environment (what engine/allocator.py now does from inside
# the process): a fixed mmap threshold and two arenas.
LEAN_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
SYSTEM_ENV = {"LIGHTCL_MALLOC": "system"}
MODE_ENV: dict[str, dict[str, str]] = {"lightcl-lean": LEAN_ENV, "lightcl-lean-plain": LEAN_ENV,
                                       "lightcl-sparse-lean": LEAN_ENV, "finetune-lean": LEAN_ENV,
                                       "lightcl-system": SYSTEM_ENV, "lightcl-sparse-system": SYSTEM_ENV,
                                       "lightcl-int8-system": SYSTEM_ENV, "lightcl-int8-lean": LEAN_ENV}


def mode_context(export_dir: str, n_classes: int, batch: int, threads: int | None, extractor=None):
    """The MethodContext of one mode: a two-task scenario at the export's split, no checkpoint (the whole
    model is composed from the export), flops figures left out (not reported here)."""
    from lightcl.bench.methods.base import MethodContext
    from lightcl.bench.scenarios import Scenario
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export_dir, verify=False)
    scenario = Scenario("bench-update", str(meta.get("dataset")), str(meta.get("dataset")), 2, 2,
                        width=int(meta["width"]), pretrain_epochs=0, epochs=1, batch_size=int(batch),
                        split=meta["split"], augment=False, arch=str(meta.get("arch") or "resnet18"))
    return MethodContext(scenario=scenario, ckpt=None, export_dir=str(export_dir), num_classes=n_classes, seed=0,
                         input_shape=tuple(int(v) for v in meta["input_shape"][-3:]), threads=threads,
                         extractor=extractor)


def check_request(export_dir, modes: list[str], batch: int, steps: int, warmup: int, threads: int | None,
                  sparse_export) -> "str | None":
    """One :class:`InputError` line for a request no worker could run (an unknown mode, a pruned export missing
    or not pruned, an int8 mode without ``frozen.int8.onnx``), before any work. Returns ``sparse_export`` as an
    absolute path (or None)."""
    from lightcl.engine.errors import InputError

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InputError(f"unknown mode(s) {bad}; known: {', '.join(MODES)}")
    if batch < 1 or steps < 1 or warmup < 0:
        raise InputError(f"batch >= 1, steps >= 1 and warmup >= 0 are required (got {batch}, {steps}, {warmup})")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    needs_sparse = [m for m in modes if m in ENGINE_MODES and ENGINE_MODES[m][1] == "sparse"]
    if needs_sparse and not sparse_export:
        raise InputError(f"mode(s) {', '.join(needs_sparse)} need a pruned export: --sparse-export DIR "
                         "(make one with `lightcl export CKPT --sparsity authors`)")
    if sparse_export:
        from lightcl.engine.export_dir import load_export_meta

        sm = load_export_meta(sparse_export)  # one clear line here, not in a worker
        if not sm.get("sparsity"):
            raise InputError(f"--sparse-export {sparse_export} is not a pruned export (no 'sparsity' in its meta.json)")
        sparse_export = str(Path(sparse_export).absolute())
    int8_dirs = [export_dir if ENGINE_MODES[m][1] == "dense" else sparse_export for m in modes
                 if m in ENGINE_MODES and ENGINE_MODES[m][0] == "ort-int8"]
    for d in int8_dirs:
        if not (Path(d) / "frozen.int8.onnx").is_file():
            raise InputError(f"{d} has no frozen.int8.onnx: export with --int8 to bench an int8 mode")
    return sparse_export
