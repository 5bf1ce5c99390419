"""Scaling of data-parallel training over MPI, on paper: a ring all-reduce model fed with
one node's measured compute and convnet's message sizes. Weak scaling: each node keeps its
batch b, the global batch is N·b.

    python3 bench/mpi_scaling.py LENET_IMAGES_PER_S RESNET20_IMAGES_PER_S

(the one-process throughputs on one 2-core node, e.g. from bench/mpi_overhead.py).

A step on N nodes: compute b / throughput, then the exchanges, none overlapped with compute:
- gradients: every shard's values of each parameter slice to the slice's rank, the summed
  slices to every rank (a reduce-scatter and an all-gather: 2·(N−1)/N·M bytes per node, as a
  ring all-reduce), 2·(N−1) latencies;
- BatchNorm (ResNet-20): 2 exchanges per layer (statistics, gradient sums), each of a few
  bytes per channel and shard: latency-bound, log2(N) latencies each (recursive doubling);
- the per-step agreement and the loss: 2 small all-gathers, log2(N) latencies each.
"""
import math
import sys

NETS = {
    # name: (parameters, BatchNorm layers, per-node batches to tabulate)
    "LeNet-5": (61_706, 0, [64, 256]),
    "ResNet-20": (272_474, 21, [128, 256]),
}
NETWORKS = {"10 Gbit/s": (1.25e9, 15e-6), "100 Gbit/s": (12.5e9, 3e-6)}


def step(n, b, throughput, params, bn, bandwidth, latency):
    compute = b / throughput
    m = 4 * params
    grads = 2 * (n - 1) / n * m / bandwidth + 2 * (n - 1) * latency
    small = (2 * bn + 2) * math.ceil(math.log2(n)) * latency
    return compute, grads + small


def main():
    thr = {"LeNet-5": float(sys.argv[1]), "ResNet-20": float(sys.argv[2])}
    print("| network | link | nodes | batch per node | compute ms | exchange ms | efficiency |")
    print("|---|---|---|---|---|---|---|")
    for name, (params, bn, batches) in NETS.items():
        for link, (bw, lat) in NETWORKS.items():
            for n in (8, 64):
                for b in batches:
                    c, x = step(n, b, thr[name], params, bn, bw, lat)
                    print(f"| {name} | {link} | {n} | {b} | {c * 1e3:.2f} | {x * 1e3:.2f} "
                          f"| {c / (c + x):.0%} |")
    print()
    print("| network | link | nodes | smallest batch per node for ≥ 80 % |")
    print("|---|---|---|---|")
    for name, (params, bn, _) in NETS.items():
        for link, (bw, lat) in NETWORKS.items():
            for n in (8, 64):
                b = 1
                while True:
                    c, x = step(n, b, thr[name], params, bn, bw, lat)
                    if c / (c + x) >= 0.8:
                        break
                    b += 1
                print(f"| {name} | {link} | {n} | {b} (global {n * b}) |")


if __name__ == "__main__":
    main()
