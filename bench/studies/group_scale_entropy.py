#!/usr/bin/env python3
"""How few bits can the gptq/rtn group scales of stories260K take? (issue 16, side information)

Recomputes each group's grid scale as RoundingScheme::grid chooses it (quarter-octave codes, the
least squared error over the group, either sign; round to nearest without LDLQ feedback, 4 bits,
groups of 32 along a row) for every matrix of stories260K, then prices the magnitude codes five
ways, per tensor, in bits per group and per weight:
  rice_med  the file's coding: zigzag distance from the tensor's median code, Rice with the best k
  ent       the ideal: the empirical entropy of the tensor's codes (no table cost)
  row2      a row reference (the row's median code, Rice-coded around the tensor's) plus each code
            Rice-coded around its row's reference
  prev      each code Rice-coded around the previous group's code in the row
  rowent    the ideal of the two-level code: entropies of the row references and of the residuals
The sign bit (1 per group) comes on top of every line.

usage: python3 bench/studies/group_scale_entropy.py ../shared/data/stories260K.bin   (python3-numpy)
"""
import struct
import sys

import numpy as np


def matrices(path):
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, _ = struct.unpack("7i", raw[:28])
    vocab = abs(vocab)
    values = np.frombuffer(raw[28:], dtype=np.float32)
    offset = 0

    def take(count, shape):
        nonlocal offset
        block = values[offset:offset + count].reshape(shape)
        offset += count
        return block

    kv_dim = kv_heads * (dim // heads)
    found = {"embed": take(vocab * dim, (vocab, dim))}
    take(layers * dim, (layers, dim))  # attention norms
    for name, (rows, cols) in [("q", (dim, dim)), ("k", (kv_dim, dim)), ("v", (kv_dim, dim)), ("o", (dim, dim))]:
        stacked = take(layers * rows * cols, (layers, rows, cols))
        for layer in range(layers):
            found[f"{layer}.{name}"] = stacked[layer]
    take(layers * dim, (layers, dim))  # MLP norms
    for name, (rows, cols) in [("gate", (hidden, dim)), ("down", (dim, hidden)), ("up", (hidden, dim))]:
        stacked = take(layers * rows * cols, (layers, rows, cols))
        for layer in range(layers):
            found[f"{layer}.{name}"] = stacked[layer]
    return found


GROUP, BITS = 32, 4
OFFSET = 1 << (BITS - 1)


def grid_code(group):
    """The code (4 per octave) and sign of the least-error grid scale, as RoundingScheme::grid."""
    highest, lowest = max(group.max(), 0.0), min(group.min(), 0.0)
    best = None
    for negative in (False, True):
        up, down = (-lowest, highest) if negative else (highest, -lowest)
        unclipped = max(up / (OFFSET - 1), down / OFFSET)
        start = int(np.round(np.log2(unclipped) * 4))
        for code in range(start - 8, start + 3):
            step = 2.0 ** (code / 4) * (-1 if negative else 1)
            q = np.clip(np.floor(group / step + OFFSET + 0.5), 0, 2 * OFFSET - 1)
            error = float(((group - (q - OFFSET) * step) ** 2).sum())
            if best is None or error < best[0]:
                best = (error, code)
    return best[1]


def zigzag(d):
    return np.where(d >= 0, 2 * d, -2 * d - 1)


def rice(d):
    z = zigzag(np.asarray(d))
    return min(int(((z >> k) + 1 + k).sum()) for k in range(8))


def entropy(codes):
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def main():
    totals = dict(rice_med=0.0, ent=0.0, row2=0.0, prev=0.0, rowent=0.0)
    weights = groups = 0
    for matrix in matrices(sys.argv[1]).values():
        rows, cols = matrix.shape
        per_row = (cols + GROUP - 1) // GROUP
        codes = np.array([[grid_code(matrix[r, g * GROUP:(g + 1) * GROUP]) for g in range(per_row)] for r in range(rows)])
        median = int(np.median(codes))
        weights += matrix.size
        groups += codes.size
        totals["rice_med"] += 16 + rice(codes.ravel() - median)  # two header bytes
        totals["ent"] += entropy(codes.ravel())
        row_reference = np.round(np.median(codes, axis=1)).astype(int)
        totals["row2"] += 24 + rice(row_reference - median) + rice((codes - row_reference[:, None]).ravel())
        previous = np.concatenate([np.full((rows, 1), median), codes[:, :-1]], axis=1)
        totals["prev"] += 24 + rice((codes - previous).ravel())
        totals["rowent"] += entropy((codes - row_reference[:, None]).ravel()) + (entropy(row_reference) if per_row > 1 else 0.0)
    print(f"{weights} weights, {groups} groups of {GROUP}; magnitude codes (the sign adds 1 bit per group, {1 / GROUP:.4f} bits per weight):")
    for name, bits in totals.items():
        print(f"  {name:9s} {bits / groups:.3f} bits per group  {bits / weights:.4f} bits per weight")


if __name__ == "__main__":
    main()
