"""Runs convnet's ONNX exports in onnxruntime and prints how well they agree.

Two checks (neither is needed by CI, which runs the same exports in tract):

    python bench/onnx_check.py [DIR]
        Every DIR/NAME.onnx (default target/tmp/onnx, written by `cargo test onnx`) on
        DIR/NAME.input.npy against convnet's own output DIR/NAME.expected.npy.

    python bench/onnx_check.py --random 100 [--seed S] [--opset N]
        Random networks of every layer type and option, built in PyTorch with random weights
        and running statistics, written as model file + safetensors, exported by
        `convnet export`, run in onnxruntime against PyTorch's inference output.

Agreement is the largest difference relative to the largest output; both pass at 1e-4.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def rel_err(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def session(path):
    onnx.checker.check_model(onnx.load(path), full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check_dir(d):
    names = sorted(f[:-5] for f in os.listdir(d) if f.endswith(".onnx"))
    if not names:
        sys.exit(f"{d}: no .onnx files (run `cargo test --release onnx` first)")
    worst = 0.0
    for n in names:
        x = np.load(os.path.join(d, n + ".input.npy"))
        want = np.load(os.path.join(d, n + ".expected.npy")).reshape(x.shape[0], -1)
        got = session(os.path.join(d, n + ".onnx")).run(None, {"input": x})[0]
        e = rel_err(got, want)
        worst = max(worst, e)
        print(f"{n:24s} batch {x.shape[0]}  max relative difference {e:.2e}  {'ok' if e <= TOL else 'FAIL'}")
    print(f"{len(names)} exports, worst {worst:.2e}")
    return worst <= TOL


# ---------------------------------------------------------------- random networks

def random_layers(rng, shape, depth, allow_residual=True):
    """Layer dicts (convnet's keys) on [C, H, W] inputs, each valid for its input."""
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from gen_torch import build

    layers = []
    while len(layers) < depth:
        c, h, w = shape
        t = rng.choice(["conv2d", "conv2d", "maxpool2d", "avgpool2d", "subsample", "relu", "sigmoid",
                        "tanh", "identity", "leaky_relu", "elu", "gelu", "silu", "batchnorm2d",
                        "dropout", "dropout2d", "adaptiveavgpool2d", "adaptivemaxpool2d"]
                       + (["residual"] * 2 if allow_residual else []))
        l = dict(type=t)
        if t == "conv2d":
            k = [rng.randint(1, 4), rng.randint(1, 4)]
            groups = rng.choice([g for g in (1, 2, 3) if c % g == 0])
            l.update(out_channels=groups * rng.randint(1, 3), kernel=k)
            if rng.random() < 0.3:
                l.update(padding=rng.choice(["same", "valid"]), dilation=[rng.randint(1, 2), rng.randint(1, 2)])
            else:
                l.update(stride=[rng.randint(1, 2), rng.randint(1, 2)], padding=[rng.randint(0, 2), rng.randint(0, 2)],
                         dilation=[rng.randint(1, 2), rng.randint(1, 2)])
            l.update(groups=groups, bias=rng.random() < 0.6)
        elif t in ("maxpool2d", "avgpool2d"):
            k = [rng.randint(1, 3), rng.randint(1, 3)]
            l.update(kernel=k, stride=[rng.randint(1, 3), rng.randint(1, 3)],
                     padding=[rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2)], ceil_mode=rng.random() < 0.5)
        elif t == "subsample":
            l.update(kernel=[rng.randint(1, 2), rng.randint(1, 2)], stride=[rng.randint(1, 2), rng.randint(1, 2)])
        elif t == "leaky_relu":
            l.update(negative_slope=round(rng.uniform(0.01, 0.3), 3))
        elif t == "elu":
            l.update(alpha=round(rng.uniform(0.3, 1.5), 3))
        elif t == "gelu":
            l.update(approximate=rng.choice(["none", "tanh"]))
        elif t == "batchnorm2d":
            l.update(eps=rng.choice([1e-5, 1e-3]), momentum=rng.choice([0.1, 0.3]), affine=rng.random() < 0.7)
        elif t in ("dropout", "dropout2d"):
            l.update(p=round(rng.uniform(0.0, 0.9), 2))
        elif t.startswith("adaptive"):
            l.update(output=[rng.randint(1, h + 1), rng.randint(1, w + 1)])
        elif t == "residual":
            body, out = random_layers(rng, shape, rng.randint(1, 3), allow_residual=False)
            l.update(layers=body)
            if tuple(out) != tuple(shape):
                l.update(shortcut=[dict(type="conv2d", out_channels=out[0], kernel=1, bias=False),
                                   dict(type="adaptiveavgpool2d", output=[out[1], out[2]]),
                                   dict(type="batchnorm2d")])
        try:
            _, out = build([l], shape)
        except Exception:
            continue
        if min(out) < 1 or int(np.prod(out)) > 4000:
            continue
        layers.append(l)
        shape = tuple(out)
    return layers, shape


def random_network(rng):
    shape = (rng.randint(1, 3), rng.randint(4, 12), rng.randint(4, 12))
    conv_part, out = random_layers(rng, shape, rng.randint(2, 7))
    layers = conv_part + [dict(type="flatten")]
    for _ in range(rng.randint(0, 3)):
        t = rng.choice(["batchnorm1d", "relu", "gelu", "silu", "dropout", "elu", "linear"])
        l = dict(type=t)
        if t == "batchnorm1d":
            l.update(eps=rng.choice([1e-5, 1e-2]), affine=rng.random() < 0.7)
        elif t == "linear":
            l.update(out_features=rng.randint(3, 12), bias=rng.random() < 0.7)
        elif t == "dropout":
            l.update(p=0.5)
        layers.append(l)
    layers.append(dict(type="linear", out_features=rng.randint(2, 10)))
    return shape, layers


def check_random(count, seed, opset, convnet):
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from gen_torch import build, randomize_bn, state, write_toml
    from safetensors.torch import save_file

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    worst, worst_convnet, failed = 0.0, 0.0, 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(count):
            shape, layers = random_network(rng)
            torch.manual_seed(seed * 1000 + i)
            model, _ = build(layers, shape)
            randomize_bn(model, g)
            model.eval()
            c = shape[0]
            norm = rng.random() < 0.5
            mean = [round(rng.uniform(0.2, 0.6), 3) for _ in range(c)]
            std = [round(rng.uniform(0.2, 0.5), 3) for _ in range(c)]
            toml = os.path.join(d, f"net{i}.toml")
            write_toml(f"net{i}", shape, layers, toml)
            if norm:
                with open(toml) as f:
                    text = f.read()
                with open(toml, "w") as f:
                    f.write(f"mean = {mean}\nstd = {std}\n" + text)
            weights = os.path.join(d, f"net{i}.safetensors")
            save_file(state(model), weights)
            out = os.path.join(d, f"net{i}.onnx")
            r = subprocess.run([convnet, "export", "--model", toml, "--weights", weights, "--output", out,
                                "--opset", str(opset)], capture_output=True, text=True)
            if r.returncode != 0:
                failed += 1
                print(f"net{i}: export failed: {r.stderr.strip()}")
                continue
            x = torch.rand((5,) + tuple(shape), generator=g)
            with torch.no_grad():
                xin = (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1) if norm else x
                want = model(xin).numpy()
            got = session(out).run(None, {"input": x.numpy()})[0]
            # convnet's own inference on the same input, as a third opinion.
            xs, ys = os.path.join(d, f"x{i}.npy"), os.path.join(d, f"y{i}.npy")
            np.save(xs, x.numpy())
            subprocess.run([convnet, "predict", "--model", toml, "--weights", weights, "--input", xs,
                            "--output", ys], capture_output=True, check=True)
            e = rel_err(got, want)
            e_convnet = rel_err(np.load(ys), want)
            worst = max(worst, e)
            worst_convnet = max(worst_convnet, e_convnet)
            if e > TOL or e_convnet > TOL:
                failed += 1
                print(f"net{i}: onnxruntime {e:.2e}, convnet {e_convnet:.2e} from PyTorch; layers: {layers}")
    print(f"{count} random networks (opset {opset}): {count - failed} agree within {TOL:g}; worst "
          f"onnxruntime vs PyTorch {worst:.2e}, convnet vs PyTorch {worst_convnet:.2e}")
    return failed == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=os.path.join(ROOT, "target", "tmp", "onnx"))
    ap.add_argument("--random", type=int, default=0, help="check this many random networks against PyTorch")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--convnet", default=os.path.join(ROOT, "target", "release", "convnet"))
    a = ap.parse_args()
    ok = check_random(a.random, a.seed, a.opset, a.convnet) if a.random else check_dir(a.dir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
