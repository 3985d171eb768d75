"""Memory meters shared by every benchmark: current and peak RSS, peak reset, and the warm-up that
makes "idle" mean "after imports and the libraries' first-use initialisation" in every process alike."""
from __future__ import annotations

import resource
import sys

MIB = float(1 << 20)


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    v = _status_kib("VmRSS")
    if v is not None:
        return v / 1024.0
    import psutil

    return psutil.Process().memory_info().rss / MIB


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    v = _status_kib("VmHWM")
    if v is not None:
        return v / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def malloc_trim() -> None:
    """Give freed heap back to the OS, so the idle RSS is not inflated by memory the method would reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def warm_up(input_shape) -> None:
    """Run one tiny training step in torch and one tiny conv in onnxruntime, then free everything,
    so that the idle RSS includes the library code every method pages in on its first step."""
    import numpy as np
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(2, *input_shape)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1])) + net(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        net(x)
    try:
        import onnx  # noqa: F401  (present, or the probe below is skipped)
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.zeros((4, input_shape[0], 3, 3), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
            "warm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *input_shape])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((2, *input_shape), dtype=np.float32)})
        del sess, model
    except Exception:  # onnxruntime missing or unusable: the engine methods will say so themselves
        pass
    del net, opt, x, loss
