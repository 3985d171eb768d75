import json
import platform
import subprocess
import sys

import pytest
import torch

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_bench_update_runs_every_mode_in_its_own_process(digits_export, tmp_path):
    out = tmp_path / "u.json"
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "update", str(digits_export), "--steps", "2",
                        "--warmup", "1", "--threads", "1", "--ledger", "--json", str(out)],
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
    _check_ledger_partition(res, r.stdout)


def _check_ledger_partition(res: dict, stdout: str) -> None:
    """The ledger is a partition of each mode's peak taken at one sampled moment: the rows add up to the peak, none is
    negative beyond noise, the parts alive at that moment are at most the step's maxima, and on glibc malloc's own
    rows (freed heap kept, step temporaries) are there and leave little unexplained."""
    from lightcl.bench.update import LEDGER_ROWS

    assert "freed heap kept by malloc" in stdout and "peak sampled at" in stdout
    for x in res["results"]:
        led, at = x["ledger_mib"], x["ledger_at"]
        rows = [led[k] for k in LEDGER_ROWS if led[k] is not None]
        assert sum(rows) + led["unexplained"] == pytest.approx(x["peak_rss_delta_mib"], abs=1e-6), x["mode"]
        assert min(rows) >= -0.5 and led["unexplained"] >= -1.0, (x["mode"], led)
        assert led["gradients"] <= at["gradients_max_mib"] + 1e-9
        assert led["activations"] <= at["activations_saved_mib"] + 1e-9
        assert at["samples"] > 20  # forward, backward and gradient hooks all fired
        assert at["rss_delta_mib"] <= x["peak_rss_delta_mib"] + 0.5  # the sampled moment lies under the peak
        if GLIBC:
            assert at["malloc_source"] in ("mallinfo2", "mallinfo")
            assert led["malloc_free"] is not None and led["torch_temporaries"] is not None
            assert led["library_pages"] > 0  # onnxruntime/torch code paged in by the step
            # malloc's rows take most of what the old ledger left unexplained (30-50 % of the peak)
            assert led["unexplained_share"] < 0.3, (x["mode"], led)
        else:
            assert at["malloc_source"].startswith("not available") and led["malloc_free"] is None


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


def test_saved_tensor_meter_sees_backward_free_saved_tensors_and_changes_no_number():
    """alive_bytes() falls to 0 as backward frees what the graph saved, and a step under the meter (its holders in
    the graph) computes the same gradients as one without it."""
    from lightcl.bench.accounting import SavedTensorMeter, StepSampler

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2))
    x = torch.randn(4, 3, 8, 8)
    net(x).sum().backward()
    ref = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    sm = SavedTensorMeter(list(net.parameters()))
    sampler = StepSampler([net], net.parameters(), sm)
    with sm:
        out = net(x).sum()
        held = sm.alive_bytes()
        out.backward()
    sampler.remove()
    assert held == sm.nbytes > x.numel() * 4  # the input and the inner activations, all held before backward
    assert sm.alive_bytes() == 0  # backward released them
    for p, g in zip(net.parameters(), ref):
        assert torch.equal(p.grad, g)
    where = [s["where"] for s in sampler.samples]
    assert any(w.startswith("backward>") for w in where) and any(w.startswith("grad#") for w in where)
    assert sampler.peak in sampler.samples
    before_backward = [s for s in sampler.samples if s["where"].startswith("forward<")][-1]
    assert before_backward["activations"] == held and sampler.samples[-1]["activations"] < held


@pytest.mark.skipif(not GLIBC, reason="glibc's mallinfo2/mallinfo")
def test_mallinfo_counts_a_tensor_in_use_and_its_bytes_freed():
    from lightcl.bench.meters import mallinfo, mallinfo_source

    assert mallinfo_source() in ("mallinfo2", "mallinfo")
    before = mallinfo()
    t = torch.ones(2 << 20)  # 8 MiB, touched
    during = mallinfo()
    inuse = lambda m: m["uordblks"] + m["hblkhd"]  # noqa: E731
    assert inuse(during) - inuse(before) >= t.numel() * 4
    del t
    after = mallinfo()
    assert inuse(during) - inuse(after) >= (2 << 20) * 4 * 0.99  # given back or kept free, no longer in use


def test_partition_without_mallinfo_leaves_malloc_rows_out():
    """Off glibc the malloc rows are None ("n/a"), never a guess, and the rest still adds up to the peak."""
    from lightcl.bench.update import format_ledger, partition_peak

    constant = {"frozen_weights": 1.0, "frozen_session": 2.0, "run_buffers": 0.5, "head_weights": 3.0,
                "optimizer_state": 0.0, "buffer_masks": 0.25, "step_inputs": 0.25}
    s0 = {"where": "step start", "gradients": 0, "activations": 0, "malloc": None}
    at = {"where": "grad#1", "gradients": 1 << 20, "activations": 2 << 20, "malloc": None, "rss_rss": 60.0,
          "rss_file": 15.0}
    rows, where = partition_peak(20.0, constant, s0, at, None, 0, {"file": 12.0, "anon": 30.0}, 50.0, rss_max=65.0)
    assert rows["malloc_free"] is None and rows["torch_temporaries"] is None and rows["malloc_other"] is None
    assert rows["library_pages"] == 3.0 and rows["gradients"] == 1.0 and rows["activations"] == 2.0
    assert rows["peak_elsewhere"] == 5.0  # the peak (20) above the metered step's highest RSS (65 - 50)
    assert rows["unexplained"] == pytest.approx(20.0 - 7.0 - 3.0 - 3.0 - 5.0)
    assert where["rss_delta_mib"] == 10.0 and where["malloc_footprint_delta_mib"] is None
    res = {"results": [{"mode": "lightcl", "ledger_mib": rows, "theoretical_mib": 1.0, "ledger_at": where}]}
    assert "n/a" in format_ledger(res)


def test_cpu_ort_session_drops_the_model_bytes_and_computes_the_same(digits_export):
    """onnxruntime's Python session keeps the model file's bytes for a provider fallback (as large as the weights);
    a CPU session has nothing to fall back to, so the extractor drops them. Its features are still those of a
    plain onnxruntime session over the same file."""
    import numpy as np
    import onnxruntime as ort

    from lightcl.engine.extractors import load_extractor

    ext = load_extractor(digits_export, backend="ort", threads=1, arena=False)
    assert ext.session._model_bytes is None and ext.session._enable_fallback is False
    x = torch.randn(5, 3, 32, 32)
    ref = ort.InferenceSession(str(digits_export / "frozen.onnx"), providers=["CPUExecutionProvider"])
    want = ref.run(None, {ref.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(ext(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_bench_update_camera_levers_modes(digits_export, tmp_path):
    """The levers' modes run and say what they did: whole-batch extraction, overlapped extraction."""
    out = tmp_path / "u.json"
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "update", str(digits_export), "--steps", "2",
                        "--warmup", "1", "--modes", "lightcl,lightcl-whole,lightcl-overlap", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    by = {x["mode"]: x for x in res["results"]}
    assert by["lightcl-whole"]["extractor"]["micro_batch"] is None
    # width 16: the head's weights (the auto budget) hold fewer images' transients than the batch of 32
    mb = by["lightcl"]["extractor"]["micro_batch"]
    assert mb is not None and 1 <= mb < 32 and "micro-batch" in r.stdout
    assert by["lightcl-overlap"]["extractor"]["threads"] == 1 and by["lightcl-overlap"]["step_ms"] > 0
    assert "step_lightcl-overlap_over_reference" not in res["ratios"]  # no reference in this run


def test_update_worker_steps_run_on_the_stream_loop(digits_export, tmp_path, monkeypatch):
    """``bench update``'s worker takes its steps through ``lightcl.data.stream.run_stream`` (the loop of
    ``lightcl learn`` and the suite's worker): a setup lesson, then the timed lesson, each step timed."""
    from pathlib import Path

    import lightcl.bench.update.measure as measure
    from lightcl.bench.update import prepare_data

    calls = []
    real = measure.run_stream

    def spy(lessons, agent, epochs):
        calls.append(([(t.task_id, list(t.classes)) for t in lessons], epochs))
        return real(lessons, agent, epochs)

    monkeypatch.setattr(measure, "run_stream", spy)
    data = prepare_data(digits_export, 4, Path(tmp_path) / "b.safetensors")
    rec = measure.worker("lightcl", str(digits_export), str(data), steps=2, warmup=1, threads=1)
    assert calls == [([(0, [0, 1]), (1, [2, 3])], 1)]
    assert rec["ledger_at"]["steps_before_meter"] == 3 and rec["step_ms"] > 0
    rec = measure.worker("finetune", str(digits_export), str(data), steps=1, warmup=0, threads=1)
    assert calls[-1] == ([(0, [2, 3])], 1)  # fine-tuning: task B only
    assert rec["ledger_at"]["steps_before_meter"] == 1
