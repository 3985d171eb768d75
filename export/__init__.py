"""lightcl.export: what runs on the HOST: backbone zoo, split, pretrain, ONNX export, TensorRT build."""
from .zoo import Backbone, create_backbone, list_backbones, register_backbone, split_backbone, split_points

__all__ = ["Backbone", "create_backbone", "list_backbones", "register_backbone", "split_backbone", "split_points"]
