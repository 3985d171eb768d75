"""Where an update step's time goes, from extra steps after the timed ones: wrappers and module hooks around
the real step (the engine's extractor, head forward and optimizer; a whole model's frozen blocks)."""
from __future__ import annotations

import statistics
import time


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]} if samples else {}


def engine_phases(learner, xb, yb, n: int) -> dict[str, float]:
    """Where the engine's step goes (median ms of ``n`` extra steps, after the timed ones): the extractor,
    the head's forward passes (buffer + batch), the optimizer's updates (inside backward with the
    per-parameter step), and the rest (loss, backward, bookkeeping). Wrappers time the real ``observe``."""
    clock = time.perf_counter
    acc = {"extract": 0.0, "head_forward": 0.0, "optimizer": 0.0}
    extract, opt = learner.extract, learner.optimizer
    update = getattr(opt, "_update", None)

    def timed_extract(x):
        t = clock()
        try:
            return extract(x)
        finally:
            acc["extract"] += clock() - t

    t_fwd = [0.0]
    h1 = learner.head.register_forward_pre_hook(lambda m, a: t_fwd.__setitem__(0, clock()))
    h2 = learner.head.register_forward_hook(lambda m, a, o: acc.__setitem__("head_forward", acc["head_forward"]
                                                                            + clock() - t_fwd[0]))
    learner.extract = timed_extract
    if update is not None:  # PerParameterSGD: each parameter's update, during backward
        def timed_update(p):
            t = clock()
            update(p)
            acc["optimizer"] += clock() - t
        opt._update = timed_update
    else:
        step = opt.step

        def timed_step(*a, **kw):
            t = clock()
            step(*a, **kw)
            acc["optimizer"] += clock() - t
        opt.step = timed_step
    samples = []
    try:
        for _ in range(n):
            for k in acc:
                acc[k] = 0.0
            t = clock()
            learner.observe(xb, yb)
            total = clock() - t
            samples.append({"total": total * 1e3, **{k: v * 1e3 for k, v in acc.items()},
                            "backward_rest": (total - sum(acc.values())) * 1e3})
    finally:
        del learner.extract
        h1.remove()
        h2.remove()
        if update is not None:
            del opt._update
        else:
            del opt.step
    return median_phases(samples)


def module_phases(step, model, k: int, n: int) -> dict[str, float]:
    """The same split for a whole-model step: the frozen blocks' forward (``blocks[:k+1]``), the rest of the
    forward, and backward + optimizer (what remains)."""
    clock = time.perf_counter
    acc = {"frozen_forward": 0.0}
    mark = [0.0]
    hs = [model.blocks[0].register_forward_pre_hook(lambda m, a: mark.__setitem__(0, clock())),
          model.blocks[k].register_forward_hook(lambda m, a, o: acc.__setitem__(
              "frozen_forward", acc["frozen_forward"] + clock() - mark[0]))]
    samples = []
    try:
        for _ in range(n):
            for key in acc:
                acc[key] = 0.0
            t = clock()
            step()
            total = clock() - t
            samples.append({"total": total * 1e3, "frozen_forward": acc["frozen_forward"] * 1e3,
                            "rest": (total - acc["frozen_forward"]) * 1e3})
    finally:
        for h in hs:
            h.remove()
    return median_phases(samples)
