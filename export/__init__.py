"""lightcl.export: what runs on the HOST: backbone zoo, split, pretrain, ONNX export, TensorRT build, and the
intake of your own model (``export_module``: any ``nn.Module``; docs/export.md "Your own model")."""
from .zoo import Backbone, create_backbone, list_backbones, register_backbone, split_backbone, split_points

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone", "split_backbone", "split_points",
           "export_module", "export_torchvision", "export_factory"]

_INTAKE = ("export_module", "export_torchvision", "export_factory")


def __getattr__(name: str):
    # the intake (torch.fx, onnx) is imported on first use, not with the zoo
    if name in _INTAKE:
        from . import intake

        return getattr(intake, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
