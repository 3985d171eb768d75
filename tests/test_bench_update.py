import json
import subprocess
import sys


def test_bench_update_runs_every_mode_in_its_own_process(digits_export, tmp_path):
    out = tmp_path / "u.json"
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "update", str(digits_export), "--steps", "2",
                        "--warmup", "1", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    modes = [x["mode"] for x in res["results"]]
    assert modes == ["lightcl", "lightcl-torch", "lightcl-reference", "finetune"]
    by = {x["mode"]: x for x in res["results"]}
    for x in res["results"]:
        assert x["step_ms"] > 0 and x["peak_rss_delta_mib"] >= 0 and x["theoretical_mib"] > 0
    # the paper's accounting: fine-tuning trains every weight and keeps every activation
    assert by["finetune"]["theoretical_mib"] > by["lightcl"]["theoretical_mib"]
    assert by["finetune"]["trainable_params"] > by["lightcl"]["trainable_params"]
    assert by["lightcl"]["extractor"]["backend"] == "ort"
    assert "rss_lightcl_over_finetune" in res["ratios"] and "step_lightcl_over_reference" in res["ratios"]
    # no mode carries a full set of gradients from one step into the next one's forward (finetune did,
    # through the sgd method's zero_grad after the forward: +42.6 MiB of peak at width 64)
    assert by["finetune"]["gradients_carried_mib"] == 0 and by["lightcl"]["gradients_carried_mib"] == 0


def test_finetune_drops_the_previous_gradients_before_its_forward(digits_export):
    """``bench update``'s finetune is the registry's ``sgd`` method: plain fine-tuning holds no gradient
    while it runs the forward, and the update is the same as zeroing after the forward."""
    import torch

    from lightcl.bench.accounting import GradientMeter
    from lightcl.bench.methods import create_method
    from lightcl.bench.update import _context

    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([2, 3] * 4)
    m = create_method("sgd", _context(str(digits_export), 4, len(x), 1))
    m.begin_task(0, [2, 3])
    m.observe(x, y)
    assert all(p.grad is not None for p in m.net.parameters())  # kept until the next step starts
    gm = GradientMeter(m.net.parameters(), forward_of=m.net)
    m.observe(x, y)
    gm.remove()
    assert gm.carried == 0 and gm.peak > 0
    # the meter does see gradients carried into a forward (the order the sgd method had)
    late = GradientMeter(m.net.parameters(), forward_of=m.net)
    m.step(m.ce(m.net(x), m.to_index(y)))
    late.remove()
    assert late.carried == sum(p.numel() * 4 for p in m.net.parameters())
    # same numbers as the late zero_grad: a second method, same seed, stepping forward-then-zero_grad
    ref = create_method("sgd", _context(str(digits_export), 4, len(x), 1))
    ref.begin_task(0, [2, 3])
    for _ in range(3):
        ref.step(ref.ce(ref.net(x), ref.to_index(y)))
    for a, b in zip(m.net.state_dict().values(), ref.net.state_dict().values()):
        assert torch.equal(a, b)
