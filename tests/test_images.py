"""Image files and input sizes on the consumer side (issues 18 and 21): the export's resize rules against an
independent restatement, 8-bit conversion of 16-bit/palette/alpha/CMYK files, skipped and refused files,
symlinked and empty class folders, and `lightcl predict --images` end to end. Real Pillow files in tmp."""
from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hostile_util import cli, make_state
from lightcl.data.datasets import combine_datasets, load_folder
from lightcl.data.errors import DatasetNotFoundError
from lightcl.data.tasks import TensorData, real_images
from lightcl.engine.errors import InputError, ShapeError
from lightcl.engine.images import ImageError, image_files, load_images, read_image
from lightcl.engine.preprocess import (ImagePreprocess, center_crop, default_shorter_side, resize_to_input,
                                       rgb_to_grey, shorter_side_size)

RNG = np.random.default_rng(0)


def _u8(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0).contiguous()


# ---------------------------------------------------------------- resize rules vs an independent restatement
@pytest.mark.parametrize("h, w, size, top, left, pad", [
    # landscape 70 x 100 into [48, 64]: S = round(48 / 0.875) = 55 -> 55 x int(55 * 100 / 70) = 55 x 78;
    # crop top round(7 / 2) = round(3.5) = 4 (Python rounds half to even), left round(14 / 2) = 7
    (70, 100, (55, 78), 4, 7, None),
    # portrait 100 x 40: 137 x 55, narrower than 64 -> zero pad 4 left, 5 right; top round(89 / 2) = 44
    (100, 40, (137, 55), 44, 0, (4, 5)),
])
def test_shorter_side_center_crop_is_torchvisions_eval_transform(h, w, size, top, left, pad):
    a = _u8(h, w)
    assert default_shorter_side(48, 64) == 55 and default_shorter_side(224, 224) == 256
    assert shorter_side_size(h, w, 55) == size
    got = resize_to_input(_nchw(a), [3, 48, 64], {"rule": "shorter-side-center-crop"})
    assert got.shape == (1, 3, 48, 64) and got.dtype == torch.uint8
    # restated by hand: torch's antialiased bilinear to the hand-computed size, rounded, then the crop window
    r = F.interpolate(_nchw(a).float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    r = r.round().clamp(0, 255).to(torch.uint8)
    if pad:
        r = F.pad(r, (pad[0], pad[1], 0, 0))
    assert torch.equal(got, r[..., top: top + 48, left: left + 64])
    # and by Pillow (the PIL path of torchvision's Resize): within one grey level, same geometry
    p = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.BILINEAR)).astype(int)
    if pad:
        p = np.pad(p, ((0, 0), (pad[0], pad[1]), (0, 0)))
    p = p[top: top + 48, left: left + 64]
    assert np.abs(got[0].permute(1, 2, 0).numpy().astype(int) - p).max() <= 1


def test_stretch_pad_channels_and_from_meta():
    a = _u8(30, 60)
    x = _nchw(a)
    st = resize_to_input(x, [3, 48, 64], None)  # absent rule: stretch (exports made before the key)
    assert torch.equal(st, resize_to_input(x, [3, 48, 64], {"rule": "stretch"}))
    ref = F.interpolate(x.float(), size=(48, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(st, ref.round().clamp(0, 255).to(torch.uint8))
    lb = resize_to_input(x, [3, 48, 64], {"rule": "pad", "fill": 7})  # 30 x 60 -> 32 x 64, 8 rows of fill each side
    assert lb.shape == (1, 3, 48, 64) and (lb[..., :8, :] == 7).all() and (lb[..., 40:, :] == 7).all()
    # channels: grey replicated only for 3, colour to ITU-R 601 grey (Pillow's integers) only for 1
    assert torch.equal(rgb_to_grey(x)[0, 0], torch.from_numpy(np.array(Image.fromarray(a).convert("L"))))
    g = resize_to_input(x, [1, 30, 60], {"rule": "stretch"})
    assert g.shape == (1, 1, 30, 60) and torch.equal(g, rgb_to_grey(x))
    assert resize_to_input(g, [3, 30, 60], None).shape == (1, 3, 30, 60)
    # the export's preprocessing from its meta: non-square, 1 channel, its rule applied
    meta = {"input_shape": [1, 48, 64], "normalization": {"mean": [0.5], "std": [0.25]},
            "resize": {"rule": "shorter-side-center-crop", "shorter_side": 60}}
    pre = ImagePreprocess.from_meta(meta)
    assert pre.size == (48, 64) and pre.resize == {"rule": "shorter-side-center-crop", "shorter_side": 60}
    out = pre(x)
    want = resize_to_input(x, [1, 48, 64], meta["resize"]).float().div(255).sub(0.5).div(0.25)
    assert out.shape == (1, 1, 48, 64) and torch.allclose(out, want)
    # a zoo export (no resize key) keeps the old behaviour: stretch to its size, 3 channels
    zoo = ImagePreprocess.from_meta({"input_shape": [3, 32, 32], "normalization": {"mean": [0.1] * 3, "std": [0.3] * 3}})
    assert zoo.resize == {"rule": "stretch"} and zoo(x).shape == (1, 3, 32, 32)
    for bad in ({"rule": "squash"}, {"rule": "pad", "fill": 300}, {"rule": "shorter-side-center-crop", "shorter_side": 0}):
        with pytest.raises(InputError):
            resize_to_input(x, [3, 48, 64], bad)
    with pytest.raises(ShapeError):
        ImagePreprocess.from_meta({**meta, "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}})
    assert torch.equal(center_crop(x, 30, 60), x)


def test_data_layer_takes_the_exports_shape_and_rule():
    from lightcl.data.datasets import ImageDataset, load_dataset

    ds = ImageDataset("t", "train", np.stack([_u8(40, 100) for _ in range(3)]), np.arange(3), list("abc"))
    rule = {"rule": "shorter-side-center-crop"}
    td = TensorData(ds, [1, 48, 64], rule)
    assert td.x.shape == (3, 1, 48, 64) and td.channels == 1 and len(td.stats()[0]) == 1
    assert torch.equal(td.x, resize_to_input(torch.from_numpy(ds.x).permute(0, 3, 1, 2), [1, 48, 64], rule))
    assert TensorData(ds).x.shape == (3, 3, 32, 32)  # the default: today's 32 x 32
    both = combine_datasets([ds, ds], "t+t", [48, 64], rule)
    assert both.x.shape == (6, 48, 64, 3)
    x, y = real_images("digits", "test", 4, {"mean": [0.5] * 3, "std": [0.5] * 3}, input_shape=[3, 48, 64],
                       resize=rule)
    assert x.shape == (4, 3, 48, 64)
    x0, _ = real_images("digits", "test", 4, {"mean": [0.5] * 3, "std": [0.5] * 3})
    assert x0.shape == (4, 3, 32, 32)
    assert load_dataset("digits", "test").x.shape[1:] == (8, 8, 1)
    # Preprocess.size is applied, not only recorded (it was stored and never used)
    from lightcl.data.transforms import Preprocess

    pre = Preprocess([0.5] * 3, [0.5] * 3, size=(48, 64), resize=rule)
    assert pre(TensorData(ds).x).shape == (3, 3, 48, 64)
    assert Preprocess([0.5], [0.5], size=(48, 64), channels=1)(td.x).shape == (3, 1, 48, 64)
    meta = {"input_shape": [1, 48, 64], "normalization": {"mean": [0.5], "std": [0.5]}, "resize": rule}
    assert torch.equal(Preprocess.from_meta(meta)(td.x), ImagePreprocess.from_meta(meta)(td.x))


# ---------------------------------------------------------------- 8-bit conversion of image files
def _png16(path: Path, v16: np.ndarray) -> None:
    Image.fromarray(v16.astype(np.uint16)).save(path)  # Pillow writes mode I;16 as a 16-bit grey PNG


def _pgm(path: Path, v: np.ndarray, maxval: int) -> None:
    with open(path, "wb") as f:
        f.write(b"P5\n%d %d\n%d\n" % (v.shape[1], v.shape[0], maxval) + v.astype(">u2").tobytes())


def test_16_bit_grey_equals_its_8_bit_twin(tmp_path):
    v8 = _u8(20, 30, 1)[..., 0]
    Image.fromarray(v8).save(tmp_path / "eight.png")
    _png16(tmp_path / "sixteen.png", v8.astype(np.uint16) * 257)
    _pgm(tmp_path / "sixteen.pgm", v8.astype(np.uint16) * 257, 65535)
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    want = read_image(tmp_path / "eight.png")
    assert want.shape == (20, 30, 1) and np.array_equal(want[..., 0], v8)
    for f in ("sixteen.png", "sixteen.pgm"):
        assert np.array_equal(read_image(tmp_path / f), want), f
        # what Pillow's own convert did before: clipped to white
        assert np.asarray(Image.open(tmp_path / f).convert("RGB")).mean() > 250
    # a PGM of maxval 1023 (Pillow scales it to 16 bit): within rounding of v * 255 / 1023
    v10 = RNG.integers(0, 1024, (20, 30))
    _pgm(tmp_path / "ten.pgm", v10, 1023)
    assert np.abs(read_image(tmp_path / "ten.pgm")[..., 0].astype(int) - np.round(v10 * 255 / 1023)).max() <= 1
    # through the folder loader too: the 16-bit twins give the 8-bit images exactly
    for c, name in enumerate(("a", "b")):
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.fromarray(v8).save(tmp_path / "tree" / name / "0.png")
        _png16(tmp_path / "tree" / name / "1.png", v8.astype(np.uint16) * 257)
    d = load_folder(tmp_path / "tree", "train", size=[20, 30], test_fraction=0.0)
    assert len(d) == 4 and all(np.array_equal(d.x[i], d.x[0]) for i in range(4))


def test_palette_alpha_cmyk_convert_like_their_rgb_twins(tmp_path):
    rgb = _u8(16, 24)
    pal = Image.fromarray(rgb).quantize(16)  # a palette image and its own RGB rendering
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(np.dstack([rgb, _u8(16, 24, 1)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, colour kept
    grey = _u8(16, 24, 1)[..., 0]
    Image.merge("LA", [Image.fromarray(grey), Image.fromarray(grey)]).save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png")[..., 0], grey)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    assert np.array_equal(read_image(tmp_path / "c.tif"), np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB")))
    Image.fromarray(grey).convert("1").save(tmp_path / "bw.png")
    assert set(np.unique(read_image(tmp_path / "bw.png"))) <= {0, 255}
    Image.fromarray(np.full((4, 4), 1.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="floating-point"):
        read_image(tmp_path / "f.tif")


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that claims ``w`` x ``h`` grey pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_bombs_corrupt_files_and_fifos_are_one_line_each(tmp_path, capsys):
    _png_header_only(tmp_path / "bomb.png", 12000, 12000)  # 144 MP: Pillow only warns between 89 and 179 MP
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(ImageError, match="bomb"):
            read_image(tmp_path / "bomb.png")
    _png_header_only(tmp_path / "huge.png", 20000, 20000)  # 400 MP: Pillow's own error
    with pytest.raises(ImageError, match="bomb"):
        read_image(tmp_path / "huge.png")
    Image.fromarray(_u8(10, 10)).save(tmp_path / "ok.png")
    with pytest.raises(ImageError, match="pixels"):
        read_image(tmp_path / "ok.png", max_pixels=99)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    os.mkfifo(tmp_path / "fifo.png")
    files = sorted(tmp_path.glob("*.png"))
    lines = []
    x, kept, skipped = load_images(files, [3, 8, 8], None, on_skip=lines.append)
    assert [files[i].name for i in kept] == ["ok.png"] and x.shape == (1, 3, 8, 8)
    assert len(skipped) == 4 and lines == skipped and all("\n" not in s for s in skipped)
    assert any("FIFO" in s for s in skipped) and any("bad.png" in s for s in skipped)


def test_folder_rules_symlinks_empty_and_skipped(tmp_path, capsys):
    store = tmp_path / "store"
    for name, colour in (("cup", (200, 0, 0)), ("ball", (0, 0, 200))):
        (store / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 30), colour).save(store / name / f"{i}.png")
    root = tmp_path / "tree"
    root.mkdir()
    (root / "cup").symlink_to(store / "cup", target_is_directory=True)  # a symlinked class folder
    (root / "ball").symlink_to(store / "ball", target_is_directory=True)
    (store / "ball" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    d = load_folder(root, "train", test_fraction=0.0)
    assert d.classes == ["ball", "cup"] and len(d) == 10 and d.extra["skipped"] and "broken.jpg" in d.extra["skipped"][0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.jpg" in err
    assert (d.x[d.y == 1][..., 0] == 200).all()
    assert len(image_files(root)) == 11
    (store / "cup" / "loop").symlink_to(store / "cup", target_is_directory=True)  # walked once, not forever
    assert len(image_files(root)) == 11
    (root / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*no images"):
        load_folder(root, "train")
    (root / "empty").rmdir()
    only_bad = tmp_path / "bad"
    (only_bad / "x").mkdir(parents=True)
    (only_bad / "x" / "a.png").write_bytes(b"nope")
    with pytest.raises(DatasetNotFoundError, match="no readable images"):
        load_folder(only_bad, "train", test_fraction=0.0, on_skip=None)


# ---------------------------------------------------------------- lightcl predict --images
@pytest.fixture(scope="module")
def state(digits_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("c1") / "state"
    make_state(digits_export, d)
    return d


def test_predict_images_converts_skips_and_scores_folders(state, digits_export, tmp_path):
    from lightcl.data.datasets import load_dataset

    test = load_dataset("digits", "test")
    root = tmp_path / "imgs"
    twins = tmp_path / "twins"
    for c in (0, 1, 2, 3):
        (root / str(c)).mkdir(parents=True)
        (twins / str(c)).mkdir(parents=True)
        for k in np.flatnonzero(test.y == c)[:4]:
            Image.fromarray(test.x[k][..., 0]).save(root / str(c) / f"{k}.png")
            _png16(twins / str(c) / f"{k}.png", test.x[k][..., 0].astype(np.uint16) * 257)
    out8 = tmp_path / "p8.json"
    rc, out, err = cli(["predict", state, "--images", root, "--export", digits_export, "--backend", "torch",
                        "--json", out8])
    assert rc == 0, err
    assert "images in class folders" in out and "accuracy" in json.loads(out8.read_text())
    out16 = tmp_path / "p16.json"
    (twins / "2" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc, out, err = cli(["predict", state, "--images", twins, "--export", digits_export, "--backend", "torch",
                        "--json", out16])
    assert rc == 4, err  # done, one image skipped: documented exit code
    assert "corrupt.png" in err and "1 of 17 images skipped" in err
    p8, p16 = json.loads(out8.read_text()), json.loads(out16.read_text())
    assert len(p16["skipped"]) == 1 and p8["skipped"] == []
    # the 16-bit twins are labelled exactly like their 8-bit originals (they were all white before)
    assert [p["label"] for p in p16["predictions"]] == [p["label"] for p in p8["predictions"]]
    assert p16["accuracy"] == p8["accuracy"]
    (root / "9").mkdir()
    rc, out, err = cli(["predict", state, "--images", root, "--export", digits_export, "--backend", "torch"])
    assert rc == 1 and "no images" in err


# ---------------------------------------------------------------- examples/robot_loop.py: the data's own classes
def test_robot_loop_takes_lessons_and_folders_from_the_data(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("robot_loop", Path(__file__).parents[1] / "examples" / "robot_loop.py")
    robot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robot)
    assert robot.lessons_of(torch.tensor([100, 3, 7, 3]), 2, None) == [[3, 7], [100]]  # any labels, no 0-5
    assert robot.lessons_of(torch.tensor([5, 1, 9, 2, 0]), 2, 2) == [[0, 1], [2, 5]]
    for name in ("cup", "ball", "cat"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.fromarray(_u8(30, 40)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"nope")
    pre = ImagePreprocess.from_meta({"input_shape": [3, 24, 32], "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
                                     "resize": {"rule": "shorter-side-center-crop"}})
    train, test, names = robot.folder_frames(tmp_path, pre)
    assert names == {0: "ball", 1: "cat", 2: "cup"}
    assert train.x.shape == (12, 3, 24, 32) and test.x.shape == (3, 3, 24, 32)  # 4 + 1 of each class
    assert sorted(train.y.tolist() + test.y.tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    assert "broken.png" in capsys.readouterr().err
    (tmp_path / "dog").mkdir()
    with pytest.raises(InputError, match="dog has no images"):
        robot.folder_frames(tmp_path, pre)
