"""The per-parameter optimizer step: the same numbers as torch.optim.SGD, without all gradients at once."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightcl.engine.optim import PerParameterSGD


def _head(seed=0):
    from lightcl.export.zoo import create_backbone, split_backbone

    torch.manual_seed(seed)
    _, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    return head.train()


def _loss(head, f, y, fb):
    """Like the learner: the batch and a buffer through the same head (parameters used twice)."""
    logits = head(f)
    _, taps = head(fb, return_taps=True)
    return F.cross_entropy(logits, y) + 1e-3 * sum(t.pow(2).mean() for t in taps.values())


@pytest.mark.parametrize("opts", [{}, {"momentum": 0.9}, {"momentum": 0.9, "weight_decay": 5e-4},
                                  {"momentum": 0.5, "dampening": 0.1, "weight_decay": 1e-3},
                                  {"momentum": 0.9, "nesterov": True}])
def test_bit_identical_to_torch_sgd(opts):
    a, b = _head(), _head()
    b.load_state_dict(a.state_dict())
    ref = torch.optim.SGD(a.parameters(), lr=0.05, **opts)
    mine = PerParameterSGD(b.parameters(), lr=0.05, **opts)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        f, fb = torch.randn(8, 64, 8, 8, generator=g), torch.randn(3, 64, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        ref.zero_grad(set_to_none=True)
        _loss(a, f, y, fb).backward()
        ref.step()
        mine.zero_grad(set_to_none=True)
        _loss(b, f, y, fb).backward()
        assert mine.applied_in_backward == len(list(b.parameters()))  # every update happened inside backward
        assert all(p.grad is None for p in b.parameters())
        mine.step()  # no-op now
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n
    if opts.get("momentum"):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(ref.state[pa]["momentum_buffer"], mine.state[pb]["momentum_buffer"])


def test_never_holds_all_gradients():
    """Measured, not assumed: the most gradient bytes alive at any moment of backward."""
    head = _head()
    params = list(head.parameters())
    total = sum(p.numel() for p in params)
    alive_max = 0

    def probe(_p):
        nonlocal alive_max
        alive_max = max(alive_max, sum(q.grad.numel() for q in params if q.grad is not None))

    # registered first, so it runs before the optimizer's hook of the same parameter
    handles = [p.register_post_accumulate_grad_hook(probe) for p in params]
    opt = PerParameterSGD(params, lr=0.01)
    _loss(head, torch.randn(4, 64, 8, 8), torch.randint(0, 10, (4,)), torch.randn(2, 64, 8, 8)).backward()
    largest = max(p.numel() for p in params)
    assert alive_max <= largest < total / 3, (alive_max, largest, total)
    for h in handles:
        h.remove()
    opt.remove()


def test_step_updates_gradients_set_by_hand_and_remove_detaches():
    head = _head()
    p = next(head.parameters())
    before = p.detach().clone()
    opt = PerParameterSGD(head.parameters(), lr=0.5)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(p.detach(), before - 0.5) and p.grad is None
    opt.remove()
    _loss(head, torch.randn(2, 64, 8, 8), torch.tensor([0, 1]), torch.randn(1, 64, 8, 8)).backward()
    assert p.grad is not None  # no hook any more: plain autograd
    with pytest.raises(ValueError):
        PerParameterSGD(head.parameters(), lr=0.0)


def test_learner_per_parameter_equals_plain(digits_export):
    """The learner's default (per-parameter) and plain steps learn the same head, classifier growth included."""
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    ext = load_extractor(digits_export, backend="torch")
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(3)]
    heads = {}
    for mode in ("plain", "per-parameter"):
        cl = LightCL(ext, load_head(digits_export), num_classes=None, momentum=0.9, optimizer_step=mode)
        for task, classes in enumerate(([0, 1], [2, 3])):
            cl.begin_task(task, classes)
            for x in xs:
                cl.observe(x, torch.tensor(classes * 4))
            cl.end_task()
        heads[mode] = copy.deepcopy(cl.head.state_dict())
    for k, v in heads["plain"].items():
        assert torch.equal(v, heads["per-parameter"][k]), k
