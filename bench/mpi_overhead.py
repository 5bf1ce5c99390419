"""Overhead of training over MPI on one machine: `mpirun -np 2` with one thread per rank
against one process with 2 threads, same command otherwise (the results are bit-identical;
this measures time). Alternating rounds; prints each run's training images/s (the epoch line)
and wall time, and the best of each.

    cargo build --release --features mpi
    python3 bench/mpi_overhead.py [ROUNDS]       # from the repository root; ROUNDS: 3

Workloads: LeNet-5, one epoch of Fashion-MNIST (60,000 images, batch 64: two shards of 32,
one per rank); ResNet-20, one epoch of the embedded digits (4,000 images, batch 256: two
shards of 128, BatchNorm statistics exchanged between the ranks).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("CONVNET_BIN", "target/release/convnet")
FASHION = "/usr/share/datasets/fashion-mnist"
WORKLOADS = {
    "lenet5_fashion_epoch": ["--model", "lenet5", "--data", FASHION, "--batch-size", "64"],
    "resnet20_digits_epoch": ["--model", "resnet20", "--batch-size", "256"],
}


def run(cmd):
    begun = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - begun
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    ips = float(re.search(r"([0-9.]+) img/s", out.stdout).group(1))
    return ips, wall


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tmp = tempfile.mkdtemp()
    try:
        for name, args in WORKLOADS.items():
            base = ["train", "--quiet", "--epochs", "1", "--schedule", "constant", "--force",
                    "--out", os.path.join(tmp, name)] + args
            alone = [BIN] + base + ["--threads", "2"]
            ranks = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", BIN] \
                + base + ["--threads", "1"]
            best = {"alone": (0.0, 1e9), "np2": (0.0, 1e9)}
            for r in range(rounds):
                for label, cmd in (("alone", alone), ("np2", ranks)):
                    ips, wall = run(cmd)
                    print(f"{name} round {r + 1} {label}: {ips:.0f} images/s, {wall:.2f} s wall")
                    b = best[label]
                    best[label] = (max(b[0], ips), min(b[1], wall))
            (a_ips, a_wall), (m_ips, m_wall) = best["alone"], best["np2"]
            print(f"{name}: alone {a_ips:.0f} images/s {a_wall:.2f} s; mpirun -np 2 "
                  f"{m_ips:.0f} images/s {m_wall:.2f} s; two ranks take "
                  f"{a_ips / m_ips:.2f}x the time of one process (training), "
                  f"{m_wall / a_wall:.2f}x (whole process)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
