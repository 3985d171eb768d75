"""Bring-your-own-model walkthrough input: a torchvision-keyed ResNet-18 trained briefly at 64x64 on sklearn digits
0-5 (folders named zero..five), saved as ``my_resnet18.pth`` (torchvision's own keys), plus the PNG folders
``imgs/`` (the backbone's classes) and ``new/`` (six..nine, for lessons). ``python examples/byo_torchvision.py DIR``;
then the commands in docs/export.md "End to end"."""
import os, sys
import numpy as np, torch
from PIL import Image
from sklearn.datasets import load_digits
OUT = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(OUT, exist_ok=True)
os.chdir(OUT)
from lightcl.export.torchvision_models import create_torchvision_model
from lightcl.export.intake import prepare
names = ["zero", "one", "two", "three", "four", "five"]
d = load_digits()
keep = d.target < 6
imgs, ys = d.images[keep], d.target[keep]
def png(i):
    return Image.fromarray((imgs[i] * 16).clip(0, 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR).convert("RGB")
for i in range(len(ys)):
    c = names[ys[i]]
    os.makedirs(f"imgs/{c}", exist_ok=True)
    png(i).save(f"imgs/{c}/{i}.png")
# the backbone's own training: the first 300 images (the folder's test split is drawn from all)
x = torch.stack([torch.from_numpy(np.asarray(png(i))).permute(2, 0, 1) for i in range(300)])
x = prepare(x, (3, 64, 64), {"rule": "stretch"}, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
y = torch.from_numpy(ys[:300].astype(np.int64))
# the folder's classes sort alphabetically: five, four, one, three, two, zero -> the model's class index
order = sorted(names); y = torch.tensor([order.index(names[v]) for v in y])
torch.manual_seed(0)
m = create_torchvision_model("tv_resnet18", num_classes=6)
opt = torch.optim.Adam(m.parameters(), lr=1e-3); m.train()
for step in range(12):
    idx = torch.arange(step * 25, step * 25 + 25) % 300
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x[idx]), y[idx]).backward(); opt.step()
for mod in m.modules():
    if isinstance(mod, torch.nn.BatchNorm2d): mod.reset_running_stats(); mod.momentum = None
with torch.no_grad():
    for i in range(0, 300, 50): m(x[i:i + 50])
torch.save(m.state_dict(), "my_resnet18.pth")
new = {6: "six", 7: "seven", 8: "eight", 9: "nine"}
for i in range(len(d.target)):
    if d.target[i] in new:
        os.makedirs(f"new/{new[d.target[i]]}", exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR).convert(
            "RGB").save(f"new/{new[d.target[i]]}/{i}.png")
