"""Times the speed workloads in PyTorch (CPU) / scipy and in convnet in one run, and prints
a table of ratios (peer time / convnet time; above 1 means convnet is faster).

    python3 -m venv venv && venv/bin/pip install torch scipy numpy
    venv/bin/python bench/compare.py [ROUNDS] [--avx2] [--only TEXT]   # from the repository root; ROUNDS: 10

--avx2 runs an AVX-512 machine as an AVX2-only one on both sides: convnet built without its
AVX-512 kernels (`--no-default-features`), PyTorch with ATen, oneDNN and MKL capped at AVX2.

convnet's side is `cargo run --release --example workloads NAME`, a process per workload and
round. Both sides use every core (PyTorch: torch.set_num_threads(os.cpu_count())); each round
times every workload on both sides, one right after the other, as the median of repeats, and
the table shows each side's best of ROUNDS rounds and the median of the rounds' ratios.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args():
    def positive(text):
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return n
    ap = argparse.ArgumentParser(description="convnet against PyTorch and scipy, side by side")
    ap.add_argument("rounds", nargs="?", type=positive, default=10,
                    help="alternating rounds of every workload (default 10)")
    ap.add_argument("--avx2", action="store_true",
                    help="both sides without AVX-512, as on an AVX2-only CPU")
    ap.add_argument("--only", metavar="TEXT", default="",
                    help="only the workloads whose name contains TEXT")
    return ap.parse_args()


# Parsed before torch is imported: the AVX2 caps are read when its libraries load.
ARGS = parse_args()
if ARGS.avx2:
    os.environ.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                      MKL_ENABLE_INSTRUCTIONS="AVX2")

import numpy as np  # noqa: E402
import scipy.signal as ss  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

THREADS = os.cpu_count()
torch.set_num_threads(THREADS)

# (workload, target ratio): the targets of the speed issue.
TARGETS = {
    "lenet5_train_step_b64": 3.0,
    "lenet5_inference_10k": 4.0,
    # ResNet-20 (3×32×32, batch 128) against PyTorch's faster memory format (channels_last).
    "resnet20_train_step_b128": 1.5,
    "resnet20_inference_1k": 1.3,
    "conv2d_n32_c64_56_k64_3x3_fwd": 1.0,
    "conv2d_n32_c64_56_k64_3x3_fwdbwd": 1.0,
    "conv2d_n8_c3_224_k64_7x7_s2_fwd": 1.0,
    "conv2d_n8_c3_224_k64_7x7_s2_fwdbwd": 1.0,
    # LeNet-5's convolutions at batch 64: no targets of their own, they explain the step's.
    "conv2d_n64_c1_28_k6_5x5_p2_fwd": None,
    "conv2d_n64_c1_28_k6_5x5_p2_fwdbwd": None,
    "conv2d_n64_c6_14_k16_5x5_fwd": None,
    "conv2d_n64_c6_14_k16_5x5_fwdbwd": None,
    "sgemm_1024": 0.8,
    "maxpool_n64_c16_28_2x2": None,
    "filter_direct_3x3_512": 5.0,
    "filter_fft_31x31_512": 1.0,
    # Whole processes against the peer in-process (the own-images issue): `convnet filter` on a
    # 2048×2048 float64 .npy (read, filter, atomic write) against scipy on the array in memory;
    # one `convnet train` process for one LeNet-5 epoch on Fashion-MNIST (its recipe, no
    # augmentation; loading the gzipped IDX files and the test evaluation included) against
    # PyTorch's training loop over tensors already in memory; and reading 70,000 PNG files
    # (`convnet eval` of that image folder) against a Python loop decoding them with PIL.
    "process_filter_3x3_2048": 1.0,
    "process_filter_fft_31x31_2048": 1.0,
    "process_lenet5_epoch_fashion": 3.0,
    "process_load_70k_png": 3.0,
}

FASHION = "/usr/share/datasets/fashion-mnist"
# The PNG folder bench/png_folder.py writes (and this script, if it is missing).
PNG_DIR = os.environ.get("CONVNET_PNG_DIR", "/tmp/fashion-png")
WORK = tempfile.mkdtemp(prefix="convnet-compare-")


def median_time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def resnet20():
    """The CIFAR ResNet-20 of He et al. (2016), as convnet's preset `resnet20`."""
    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return F.relu(self.body(x) + self.shortcut(x))
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def resnet20_workloads(g):
    """ResNet-20's training step and inference, each timed in both of PyTorch's memory formats;
    a round's time is the faster format's."""
    x = torch.rand(128, 3, 32, 32, generator=g)
    y = torch.arange(128) % 10
    xs = torch.rand(1024, 3, 32, 32, generator=g)
    formats = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = resnet20().to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        xf, xsf = x.to(memory_format=fmt), xs.to(memory_format=fmt)

        def step(model=model, opt=opt, xf=xf):
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xf), y).backward()
            opt.step()

        def infer(model=model, xsf=xsf):
            model.eval()
            with torch.no_grad():
                for s in range(0, 1024, 128):
                    model(xsf[s:s + 128])
        formats[fmt] = (step, infer)
    return {
        "resnet20_train_step_b128":
            lambda: min(median_time(f[0], 3, 15) for f in formats.values()),
        "resnet20_inference_1k":
            lambda: min(median_time(f[1], 2, 10) for f in formats.values()),
    }


def peer_workloads():
    """Each workload's timing function: called once per round, it returns the median time of
    its repeats. The inputs are made once, up front."""
    g = torch.Generator().manual_seed(0)
    out = {}
    model = lenet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(64, 1, 28, 28, generator=g)
    y = torch.arange(64) % 10

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    out["lenet5_train_step_b64"] = lambda: median_time(step, 20, 200)

    xs = torch.rand(10_000, 1, 28, 28, generator=g)

    def infer():
        with torch.no_grad():
            for s in range(0, 10_000, 500):
                model(xs[s:s + 500])
    out["lenet5_inference_10k"] = lambda: median_time(infer, 2, 10)
    out.update(resnet20_workloads(g))

    def conv(n, c, hw, k, ks, stride, pad, backward, need_dx=True):
        x = torch.randn(n, c, hw, hw, generator=g, requires_grad=backward and need_dx)
        w = torch.randn(k, c, ks, ks, generator=g, requires_grad=backward)
        b = torch.randn(k, generator=g, requires_grad=backward)

        def run():
            if backward:
                yv = F.conv2d(x, w, b, stride=stride, padding=pad)
                yv.backward(torch.ones_like(yv))
            else:
                with torch.no_grad():
                    F.conv2d(x, w, b, stride=stride, padding=pad)
        if n * k * hw * hw > 1 << 20:
            return lambda: median_time(run, 2, 10)
        return lambda: median_time(run, 5, 50)
    out["conv2d_n32_c64_56_k64_3x3_fwd"] = conv(32, 64, 56, 64, 3, 1, 1, False)
    out["conv2d_n32_c64_56_k64_3x3_fwdbwd"] = conv(32, 64, 56, 64, 3, 1, 1, True)
    out["conv2d_n8_c3_224_k64_7x7_s2_fwd"] = conv(8, 3, 224, 64, 7, 2, 3, False)
    # A stem layer: its input needs no gradient.
    out["conv2d_n8_c3_224_k64_7x7_s2_fwdbwd"] = conv(8, 3, 224, 64, 7, 2, 3, True, need_dx=False)
    out["conv2d_n64_c1_28_k6_5x5_p2_fwd"] = conv(64, 1, 28, 6, 5, 1, 2, False)
    out["conv2d_n64_c1_28_k6_5x5_p2_fwdbwd"] = conv(64, 1, 28, 6, 5, 1, 2, True, need_dx=False)
    out["conv2d_n64_c6_14_k16_5x5_fwd"] = conv(64, 6, 14, 16, 5, 1, 0, False)
    out["conv2d_n64_c6_14_k16_5x5_fwdbwd"] = conv(64, 6, 14, 16, 5, 1, 0, True)

    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    out["sgemm_1024"] = lambda: median_time(lambda: torch.mm(a, b), 3, 20)
    xp = torch.randn(64, 16, 28, 28, generator=g)
    out["maxpool_n64_c16_28_2x2"] = lambda: median_time(lambda: F.max_pool2d(xp, 2), 5, 50)

    rng = np.random.default_rng(0)
    img = rng.standard_normal((512, 512))
    k3 = rng.standard_normal((3, 3))
    out["filter_direct_3x3_512"] = lambda: median_time(lambda: ss.convolve2d(img, k3), 3, 30)
    k31 = rng.standard_normal((31, 31))
    out["filter_fft_31x31_512"] = lambda: median_time(lambda: ss.fftconvolve(img, k31), 3, 30)

    big = rng.standard_normal((2048, 2048))
    for name, a in (("img2048", big), ("k3", k3), ("k31", k31)):
        np.save(os.path.join(WORK, name + ".npy"), a)
    out["process_filter_3x3_2048"] = lambda: median_time(lambda: ss.convolve2d(big, k3), 1, 3)
    out["process_filter_fft_31x31_2048"] = lambda: median_time(lambda: ss.fftconvolve(big, k31), 1, 3)
    if os.path.isdir(FASHION):
        out["process_lenet5_epoch_fashion"] = fashion_epoch(g)
    if os.path.isdir(FASHION):
        out["process_load_70k_png"] = png_load()
    return out


def fashion_epoch(g):
    """One epoch of LeNet-5 with convnet's preset recipe (AdamW lr 0.003, weight decay 0.1,
    batch 32, shuffled, cross-entropy) over Fashion-MNIST's 60,000 training images, already
    in memory as a float tensor."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from png_folder import idx
    x = torch.from_numpy(idx(f"{FASHION}/train-images-idx3-ubyte.gz").copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(idx(f"{FASHION}/train-labels-idx1-ubyte.gz").astype(np.int64))

    def epoch():
        model = lenet()
        opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.1)
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), 32):
            i = order[s:s + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    return lambda: median_time(epoch, 0, 1)


def png_load():
    """The PIL loop of bench/png_folder.py over its 70,000 files (written first if missing)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from png_folder import pil_load, write_folder
    write_folder(PNG_DIR)
    return lambda: median_time(lambda: pil_load(PNG_DIR), 0, 1)


def build_ours(avx2):
    """Builds convnet's side once; returns the path of its binary. The AVX2-only build has a
    target directory of its own, so that the two builds do not replace each other."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.path.join(root, "target", "avx2") if avx2 else os.path.join(root, "target")
    cmd = ["cargo", "build", "--release", "--example", "workloads", "--bin", "convnet", "--target-dir", target]
    if avx2:
        # Without `avx512`; the binary needs the command line's feature.
        cmd += ["--no-default-features", "--features", "cli"]
    subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(target, "release", "examples", "workloads")


def whole_process(args, repeats):
    """The median wall time of a whole convnet process."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours(binary, name):
    """convnet's median time of one workload, in a process of its own (for the process_
    workloads, the whole `convnet` command)."""
    exe = os.path.join(os.path.dirname(os.path.dirname(binary)), "convnet")
    w = lambda f: os.path.join(WORK, f)  # noqa: E731
    if name.startswith("process_filter"):
        k = "k3.npy" if "3x3" in name else "k31.npy"
        return whole_process([exe, "filter", w("img2048.npy"), "--kernel", w(k), "--output", w("out.npy")], 3)
    if name == "process_lenet5_epoch_fashion":
        return whole_process([exe, "train", "--quiet", "--data", FASHION, "--epochs", "1", "--augment", "0",
                              "--force", "--out", w("run-fashion")], 1)
    if name == "process_load_70k_png":
        run = w("run-lenet")
        if not os.path.isdir(run):
            subprocess.run([exe, "train", "--quiet", "--epochs", "1", "--force", "--out", run], check=True,
                           stdout=subprocess.DEVNULL)
        return whole_process([exe, "eval", "--model", run, "--data", PNG_DIR], 1)
    text = subprocess.run([binary, name], check=True, capture_output=True, text=True).stdout
    times = {n: float(t) for n, t in (line.split("\t") for line in text.strip().splitlines())}
    return times[name]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# Rounds of (peer, convnet), workload by workload: both sides of a workload are timed within
# seconds of each other, and which goes first alternates from round to round. A VM's speed
# drifts by tens of percent over seconds to minutes, and a slow stretch can last through several
# rounds: each side's best round estimates its uncontended time, and more rounds make it likelier
# that each side meets a quiet stretch (at 5 rounds, one side's best was at times still a slow
# round's). The median of the rounds' own ratios (both sides timed back to back, so under about
# the same conditions) is printed beside it.


def main():
    rounds = ARGS.rounds
    binary = build_ours(ARGS.avx2)
    workloads = peer_workloads()
    names = [name for name in TARGETS if ARGS.only in name and name in workloads]
    peer = {name: [] for name in names}
    mine = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            sides = [(peer[name], workloads[name]), (mine[name], lambda: ours(binary, name))]
            for times, timed in (sides if r % 2 == 0 else sides[::-1]):
                times.append(timed())
    isa = "AVX2 only" if ARGS.avx2 else "every instruction set"
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, {THREADS} threads, {isa} "
          f"(PyTorch's CPU capability: {torch.backends.cpu.get_cpu_capability()}); "
          f"torch {torch.__version__}, scipy {ss.__name__ and __import__('scipy').__version__}; "
          f"best of {rounds} alternating rounds, each the median of repeats, workload by workload")
    print()
    print("| workload | peer | peer time | convnet time | ratio (peer / convnet) | median of the rounds' ratios "
          "| target | met |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    ok = True
    best = {}
    for name in names:
        target = TARGETS[name]
        p, m = min(peer[name]), min(mine[name])
        best[name] = (p, m)
        ratio = p / m
        paired = statistics.median(a / b for a, b in zip(peer[name], mine[name]))
        who = "scipy" if "filter" in name else "PIL" if "png" in name else "PyTorch"
        met = "" if target is None else ("yes" if ratio >= target else "no")
        ok &= target is None or ratio >= target
        tgt = "" if target is None else f"≥ {target:g}×"
        print(f"| {name} | {who} | {p * 1e3:.2f} ms | {m * 1e3:.2f} ms | {ratio:.2f}× | {paired:.2f}× "
              f"| {tgt} | {met} |")
    print()
    for name, images in (("lenet5_train_step_b64", 64), ("resnet20_train_step_b128", 128),
                         ("resnet20_inference_1k", 1024)):
        if name in best:
            p, m = best[name]
            print(f"{name}: convnet {images / m:,.0f} images/s, PyTorch {images / p:,.0f} images/s")
    if "sgemm_1024" in best:
        p, m = best["sgemm_1024"]
        print(f"sgemm 1024³: convnet {2 * 1024 ** 3 / m / 1e9:.0f} GFLOP/s, "
              f"PyTorch {2 * 1024 ** 3 / p / 1e9:.0f} GFLOP/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
