import pytest
import torch

from lightcl.export.zoo import create_backbone, list_backbones, split_backbone, split_points


def test_registry_has_resnet18():
    assert "resnet18" in list_backbones()
    with pytest.raises(ValueError, match="unknown arch"):
        create_backbone("nope")


def test_resnet18_shapes_and_width():
    m = create_backbone("resnet18", num_classes=7, width=16).eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    m64 = create_backbone("resnet18", width=64)
    n = sum(p.numel() for p in m64.parameters())
    assert 11.0e6 < n < 11.3e6  # the CIFAR ResNet-18 has ~11.17M parameters


@pytest.mark.parametrize("split", split_points(create_backbone("resnet18", width=16)))
def test_split_composition_equals_whole_model(split):
    torch.manual_seed(0)
    m = create_backbone("resnet18", num_classes=10, width=16)
    # non-trivial BN statistics, so a wrong eval/train mode would show
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 32, 32))
    m.eval()
    frozen, head = split_backbone(m, split)
    head.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (head(frozen(x)) - m(x)).abs().max().item()
    assert diff <= 1e-5, (split, diff)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert list(frozen(x).shape[1:]) == head.config["in_features"]


def test_split_points_names():
    pts = split_points(create_backbone("resnet18", width=16))
    for p in ["stem", "layer1", "layer2", "layer3", "layer4", "layer4.0", "layer3.1"]:
        assert p in pts
    with pytest.raises(ValueError, match="unknown split point"):
        split_backbone(create_backbone("resnet18", width=16), "layer9")


def test_head_taps_and_roundtrip(tmp_path):
    from lightcl.engine.head import Head

    m = create_backbone("resnet18", width=16).eval()
    _, head = split_backbone(m, "layer3")
    assert head.tap_names() == ["layer4.0.conv1", "layer4.0", "layer4.1.conv1", "layer4.1", "logits"]
    f = torch.randn(3, *head.config["in_features"])
    logits, taps = head.eval()(f, return_taps=True)
    assert set(taps) == set(head.tap_names())
    head.save(tmp_path / "h.safetensors")
    h2 = Head.load(tmp_path / "h.safetensors").eval()
    assert torch.equal(h2(f), logits)


def test_register_backbone_entry_defaults(monkeypatch):
    """A backbone registered the old way (name only) gets an entry: the default input size, the default
    split = the last stage but one, and ``split_backbone`` without a split uses it."""
    from lightcl.engine.blocks import BasicBlock, Stem
    from lightcl.export import zoo

    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))

    @zoo.register_backbone("tiny-test")
    def tiny(num_classes=10, width=8, in_channels=3):
        """Two stages."""
        blocks = [("stem", Stem(in_channels, width)), ("a.0", BasicBlock(width, width)),
                  ("b.0", BasicBlock(width, 2 * width, 2))]
        return zoo.Backbone("tiny-test", blocks, feat_dim=2 * width, num_classes=num_classes, width=width)

    e = zoo.backbone_entry("tiny-test")
    assert e.input_size == zoo.DEFAULT_INPUT_SIZE and e.split == "a" and e.description == "Two stages."
    m = zoo.create_backbone("tiny-test", width=8, in_channels=1)
    assert m.input_size == (1, 32, 32)
    _, head = split_backbone(m.eval())
    assert head.config["split"] == "a" and [b["name"] for b in head.config["blocks"]] == ["b.0"]
    assert zoo.default_split("resnet18") == "layer3"
