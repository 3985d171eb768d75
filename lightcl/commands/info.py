"""``lightcl info``: what this machine really has."""
from __future__ import annotations

import argparse
import json

from lightcl.commands import _args

DESCRIPTION = ("Versions of python, torch, onnx, onnxruntime (and which package provides it), tensorrt; "
               "the execution providers that really work (a tiny session per provider); the registered extractor "
               "backends, backbones and torchvision-keyed families; CUDA devices; CPUs.")


def _backbones() -> dict:
    """Registered backbones and their default configs (host-side registry; absent on a device-only install)."""
    try:
        from lightcl.export.zoo import backbone_entry, list_backbones
    except ImportError as e:
        return {"unavailable": str(e)}
    return {name: backbone_entry(name).default_cfg() for name in list_backbones()}


def _torchvision_models() -> dict:
    """The torchvision-keyed families (``tv_*``: torchvision's state-dict keys; host-side, like the zoo)."""
    try:
        from lightcl.export.torchvision_models import list_torchvision_models, torchvision_entry
    except ImportError as e:
        return {"unavailable": str(e)}
    return {name: torchvision_entry(name).default_cfg() for name in list_torchvision_models()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    _args.add_json(p, to_stdout=True)


def run(args: argparse.Namespace) -> int:
    from lightcl.engine.runtime_info import collect, extractor_backends, working_providers

    info = collect()
    info["execution_providers"] = working_providers()
    info["extractor_backends"] = extractor_backends()
    from lightcl.engine.extractors import LEARNING_AUTO

    info["learning_extractor"] = LEARNING_AUTO
    info["backbones"] = _backbones()
    info["torchvision_models"] = _torchvision_models()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    listed = ("execution_providers", "cuda_devices", "extractor_backends", "backbones", "torchvision_models")
    rows = [(k, v) for k, v in info.items() if k not in listed]
    for k, v in rows:
        print(f"{k:22s} {v if v is not None else 'not installed'}")
    print("execution providers:")
    for prov, status in info["execution_providers"].items():
        print(f"  {prov:28s} {status}")
    print("extractor backends:")
    for name, status in info["extractor_backends"].items():
        print(f"  {name:28s} {status}")
    print(f"  learning with auto: {info['learning_extractor']}")
    print("backbones:")
    for name, cfg in info["backbones"].items():
        if name == "unavailable":
            print(f"  {cfg}")
            continue
        print(f"  {name:28s} input {'x'.join(map(str, cfg['input_size']))}, default split {cfg['default_split']}, "
              f"width {cfg['default_width']}; splits: {', '.join(cfg['split_points'])}")
    print("torchvision-keyed families (load torchvision state dicts as they are):")
    for name, cfg in info["torchvision_models"].items():
        if name == "unavailable":
            print(f"  {cfg}")
            continue
        print(f"  {name:28s} input {'x'.join(map(str, cfg['input_size']))} (shorter side {cfg['shorter_side']}, "
              f"centre crop), default split {cfg['default_split']}, classifier {cfg['classifier']}; "
              f"{len(cfg['split_points'])} split points")
    print("cuda devices:" + ("" if info["cuda_devices"] else " none"))
    for d in info["cuda_devices"]:
        print(f"  [{d['index']}] {d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)")
    return 0
