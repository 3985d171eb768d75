"""What ``lightcl bench update`` prints: the per-mode table and the memory ledger."""
from __future__ import annotations

from .ledger import LEDGER_ROWS


LEDGER_LABELS = {"frozen_weights": "frozen weights", "frozen_session": "runtime session (malloc in use)",
                 "run_buffers": "run buffers kept (malloc in use)", "head_weights": "trainable weights",
                 "gradients": "gradients alive at the peak", "optimizer_state": "optimizer state",
                 "activations": "saved activations alive at the peak", "buffer_masks": "buffer + masks",
                 "step_inputs": "step inputs + kept features", "malloc_other": "other malloc in use before the step",
                 "torch_temporaries": "step temporaries (malloc in use)", "malloc_free": "freed heap kept by malloc",
                 "library_pages": "library pages (file-backed RSS)",
                 "peak_elsewhere": "peak reached outside the metered step",
                 "unexplained": "unexplained (non-malloc anon, between samples)",
                 "peak_rss_delta": "peak RSS delta (measured)"}


def format_ledger(res: dict) -> str:
    """Where each mode's peak goes, MiB; one column per mode, theoretical figure beside it. A row glibc's
    accounting could not give is "n/a" (not glibc)."""
    rs = res["results"]
    w = max(12, *(len(r["mode"]) + 1 for r in rs))

    def cell(v, fmt="{:.1f}"):
        return f"{'n/a' if v is None else fmt.format(v):>{w}s}"

    lines = ["memory ledger (MiB above the idle process, at the step's sample where malloc's footprint is largest: "
             "tensor bytes, gradient and saved-tensor hooks, glibc mallinfo2, /proc RSS by kind)",
             f"{'':40s}" + "".join(f"{r['mode']:>{w}s}" for r in rs)]
    for key in (*LEDGER_ROWS, "unexplained", "peak_rss_delta"):
        lines.append(f"{LEDGER_LABELS[key]:40s}" + "".join(cell(r["ledger_mib"].get(key)) for r in rs))
    lines.append(f"{'unexplained share of the peak':40s}" + "".join(
        cell(100 * r["ledger_mib"]["unexplained_share"], "{:.1f}%") for r in rs))
    lines.append(f"{'theoretical (paper accounting)':40s}" + "".join(cell(r["theoretical_mib"]) for r in rs))
    at = [r.get("ledger_at") or {} for r in rs]
    lines.append(f"{'  gradients, most alive at once':40s}" + "".join(cell(a.get("gradients_max_mib")) for a in at))
    lines.append(f"{'  activations saved in the step':40s}" + "".join(cell(a.get("activations_saved_mib")) for a in at))
    lines.append(f"{'  RSS delta at the sample':40s}" + "".join(cell(a.get("rss_delta_mib")) for a in at))
    lines.append(f"{'  malloc footprint delta at the sample':40s}" + "".join(
        cell(a.get("malloc_footprint_delta_mib")) for a in at))
    for r, a in zip(rs, at):
        if a:
            lines.append(f"{r['mode']}: peak sampled at {a.get('where')} ({a.get('samples')} samples; malloc "
                         f"accounting: {a.get('malloc_source', 'n/a')}); the process's peak was reached by the end "
                         f"of step {a.get('peak_step')} ({a.get('steps_before_meter')} = the metered step, "
                         "0 = the first warm-up)")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    lines = [f"{'mode':22s} {'step ms':>9s} {'p90 ms':>8s} {'CPU ms':>8s} {'faults':>7s} {'peak RSS delta MiB':>19s} "
             f"{'theoretical MiB':>16s}"]
    for r in res["results"]:
        lines.append(f"{r['mode']:22s} {r['step_ms']:9.1f} {r['step_ms_p90']:8.1f} {r.get('step_cpu_ms', float('nan')):8.1f} "
                     f"{r.get('step_minor_faults', -1):7d} {r['peak_rss_delta_mib']:19.1f} {r['theoretical_mib']:16.1f}")
    for k, v in res["ratios"].items():
        lines.append(f"{k}: {v:.3f}")
    ld = res.get("learning_default")
    if ld:
        lines.append(f"learning default on CPU (backend auto): {ld['backend']} ({ld['why']}; mode {ld['mode']})")
    for r in res["results"]:
        ph = r.get("phases_ms")
        if ph:
            lines.append(f"{r['mode']} step phases (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
    for r in res["results"]:
        x = r.get("extractor") or {}
        if x.get("micro_batch") is not None or x.get("activation_bytes_per_image"):
            lines.append(f"{r['mode']} extraction: micro-batch {x.get('micro_batch') or 'whole batch'} images "
                         f"(budget {(x.get('memory_budget') or 0) / 2**20:.1f} MiB, estimated "
                         f"{(x.get('activation_bytes_per_image') or 0) / 2**20:.2f} MiB per image)")
    for r in res["results"]:
        i8 = (r.get("extractor") or {}).get("int8")
        if i8 and i8.get("forced"):
            lines.append(f"note: {r['mode']} runs an int8 model kept with --force (top-1 agreement "
                         f"{i8['top1_agreement']:.4f} < {i8['min_agreement']}): not a first-class backend here")
    return "\n".join(lines)
