"""``lightcl bench update``: one update step, measured per mode, each mode in a fresh subprocess.

Modes (same data, same head):
- ``lightcl``            the engine, onnxruntime extractor, buffer kept as frozen features
- ``lightcl-torch``      the engine, torch extractor
- ``lightcl-reference``  the authors' procedure: whole model in torch, train mode, buffer images pushed
                         through the whole model every step
- ``finetune``           the whole model trained with cross-entropy
- ``lightcl-int8``       (opt-in) the engine with the int8 extractor (an export made with ``--int8``)
- ``lightcl-sparse``     (opt-in, ``sparse_export``) the engine on a physically pruned export
- ``lightcl-sparse-int8`` (opt-in) the same with the pruned export's int8 extractor
- ``lightcl-plain``      (opt-in) the engine with the plain ``torch.optim.SGD`` step (what the
                         per-parameter step saves), ``lightcl-noarena`` onnxruntime without its CPU arena
- ``lightcl-lean``, ``lightcl-sparse-lean``, ``finetune-lean`` (opt-in) no onnxruntime arena, and the
                         process's glibc malloc with a fixed mmap threshold and two arenas (``LEAN_ENV``)
- ``lightcl-system``, ``lightcl-sparse-system``, ``lightcl-int8-system`` (opt-in) the engine with glibc's
                         malloc forced (``LIGHTCL_MALLOC=system``) and onnxruntime's arena on
- ``lightcl-whole``, ``lightcl-int8-whole`` (opt-in) the engine without micro-batched extraction
                         (``extract_budget=None``: whole batches through the frozen part, as before it);
                         ``lightcl-int8-lean`` the int8 engine with ``LEAN_ENV``
- ``lightcl-overlap``, ``lightcl-int8-overlap`` (opt-in) the next batch extracted while the head trains
                         (``LightCL.prefetch``): onnxruntime 1 thread, torch the other cores; the ledger's and the
                         phases' extra steps run sequentially

Engine modes apply the engine's allocator policy (engine/allocator.py: glibc's defaults unless
``LIGHTCL_MALLOC=lean`` is set, e.g. ``LIGHTCL_MALLOC=lean lightcl bench update ...``) where ``load_extractor``
does (before the session is created) and run a learning extractor without onnxruntime's arena.
Each mode also reports process CPU ms and minor page faults per step, and the step's phases.

Every mode also measures a *ledger* of its peak (``ledger_mib``): a partition of the peak RSS delta taken at one
moment of one extra, metered step after the timed ones (so the timing pays nothing): the sample where glibc
malloc's footprint is largest, among samples taken at every module's forward, every autograd node of the head
in backward, every gradient accumulation, around the extractor and the optimizer, and every millisecond from a
thread (inside onnxruntime's run and torch's kernels). Rows: frozen weights (ONNX initializers or torch
tensors), the runtime session and what its runs keep (malloc's in-use growth across its load and first run),
head weights, gradients and saved activations alive at that moment (gradient hooks, saved-tensor holders),
optimizer state, buffer + masks, the step's inputs, other malloc memory in use before the step, the step's
temporaries (malloc's in-use growth no tensor row explains: oneDNN scratch, autograd's intermediate
gradients), the freed heap malloc keeps (``mallinfo2`` ``fordblks``), library pages (file-backed RSS), and what
remains unexplained (non-malloc memory: Python's arenas, thread stacks; the part of the peak reached outside the
sampled moment). :func:`partition_peak` says how each is measured and why none is counted twice. Without glibc the
malloc rows are "not available" (``None``).

Peak RSS is measured above the worker's RSS right after its imports (the idle process), so the
interpreter and libraries do not count; theoretical memory follows the paper's accounting.

Each mode is built from the benchmark's method registry (``bench/methods``), as the suite builds it:
the engine modes are the ``lightcl`` method (its learner options from ``ENGINE_MODES``, on an extractor
opened here so its load is metered on its own), ``lightcl-reference`` is the ``lightcl-reference``
method and ``finetune`` the ``sgd`` method (the whole model, a fresh classifier, CE over its outputs),
both on the whole model composed from the export. Each runs through the one worker harness
(:func:`lightcl.bench.worker.run_worker`), its steps on the one stream loop (:func:`lightcl.data.stream.run_stream`).

The package, by idea: :mod:`.modes` (what each mode builds, its environment, the request's checks),
:mod:`.measure` (the worker: a mode built, its steps timed on the stream loop, its record), :mod:`.ledger`
(the metered step and the peak's partition), :mod:`.phases` (where a step's time goes), :mod:`.run` (the
parent: batches, one process per mode, ratios), :mod:`.tables` (what is printed).
"""
from __future__ import annotations

from lightcl.bench.methods.base import compose_backbone  # noqa: F401  (moved there; kept importable here)

from .ledger import LEDGER_ROWS, partition_peak  # noqa: F401
from .measure import run_mode, worker  # noqa: F401
from .modes import (DEFAULT_MODES, ENGINE_MODES, LEAN_ENV, LEARNING_ORT, MODE_ENV, MODES, OVERLAP_MODES,  # noqa: F401
                    SYSTEM_ENV, SYSTEM_ORT, mode_context, overlap_threads)
from .run import bench_update, prepare_data  # noqa: F401
from .tables import LEDGER_LABELS, format_ledger, format_table  # noqa: F401

_context = mode_context  # the name tests and docs/results/ledger.md use
