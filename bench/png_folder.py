"""Loading an image folder: convnet against a Python loop decoding the same PNGs with PIL.

Writes full Fashion-MNIST (70,000 images, from Debian's dataset-fashion-mnist) as
DIR/train/<class>/NNNNN.png and DIR/test/<class>/NNNNN.png once, then times, side by side:
  - PIL: a Python loop that opens every file, converts it to "L" and stacks the arrays
    into one uint8 NumPy array (with the labels), as a hand-written loader does;
  - convnet: `convnet eval` of a LeNet-5 run on that folder, which decodes all 70,000 files
    (on every core) and then evaluates the 10,000 test images (a few hundredths of a second).
Each side runs `--rounds` times, alternating; the best of each counts.

    venv/bin/python bench/png_folder.py [--dir /tmp/fashion-png] [--rounds 3]
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"
NAMES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"]


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_folder(out):
    if os.path.isdir(os.path.join(out, "test")):
        return
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = idx(f"{FASHION}/{prefix}-images-idx3-ubyte.gz")
        y = idx(f"{FASHION}/{prefix}-labels-idx1-ubyte.gz")
        for name in NAMES:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)
        for i, (img, label) in enumerate(zip(x, y)):
            Image.fromarray(img, "L").save(os.path.join(out, split, NAMES[label], f"{i:05}.png"))


def pil_load(out):
    """The loop a user writes: every file through PIL into one array."""
    images, labels = [], []
    for split in ("train", "test"):
        classes = sorted(os.listdir(os.path.join(out, split)))
        for label, name in enumerate(classes):
            d = os.path.join(out, split, name)
            for f in sorted(os.listdir(d)):
                with Image.open(os.path.join(d, f)) as im:
                    images.append(np.asarray(im.convert("L"), dtype=np.uint8))
                labels.append(label)
    return np.stack(images), np.array(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/fashion-png")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    write_folder(a.dir)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target/release/convnet")
    run = tempfile.mkdtemp()
    subprocess.run([exe, "train", "--quiet", "--epochs", "1", "--force", "--out", run], check=True,
                   stdout=subprocess.DEVNULL)
    best = {"PIL": float("inf"), "convnet": float("inf")}
    for r in range(a.rounds):
        for side in (("PIL", "convnet") if r % 2 == 0 else ("convnet", "PIL")):
            t = time.perf_counter()
            if side == "PIL":
                x, y = pil_load(a.dir)
                assert x.shape == (70000, 28, 28), x.shape
            else:
                subprocess.run([exe, "eval", "--model", run, "--data", a.dir], check=True,
                               stdout=subprocess.DEVNULL)
            best[side] = min(best[side], time.perf_counter() - t)
    print(f"70,000 PNG files: PIL loop {best['PIL']:.2f} s, convnet (whole eval process) "
          f"{best['convnet']:.2f} s: {best['PIL'] / best['convnet']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
