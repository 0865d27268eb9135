#!/usr/bin/env python3
"""Is the sign bit of a gptq/rtn group scale worth its 1 bit per 32 weights? (issue 16, side information)

A group's scale carries a sign because the 2^b-level grid is asymmetric, -2^(b-1) .. 2^(b-1) - 1
(llama.cpp's Q4_0): the sign puts the extra level on the side of the group's largest weight, so the
step is |max| / 2^(b-1). Without a sign the grid must be symmetric, the midrise levels
+-0.5 .. +-(2^(b-1) - 0.5), with the step |max| / (2^(b-1) - 0.5). This prints the squared error of
the two by round to nearest (no LDLQ), groups of 32 along each row of every matrix of stories260K,
and the error the saved bit would buy back at ~6.02 dB per bit of rate (1/32 bit per weight).

usage: python3 bench/studies/group_scale_sign.py ../shared/data/stories260K.bin   (no dependencies)
"""
import math
import struct
import sys

GROUP = 32


def matrices(path):
    """The rows of every matrix of a llama2.c file (embedding, q, k, v, o, gate, down, up)."""
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, _ = struct.unpack("7i", raw[:28])
    vocab, kv_dim = abs(vocab), kv_heads * (dim // heads)
    values = struct.unpack_from(f"<{(len(raw) - 28) // 4}f", raw, 28)
    offset, rows = 0, []

    def take(count, width=None):
        nonlocal offset
        if width is not None:
            rows.extend(values[at:at + width] for at in range(offset, offset + count, width))
        offset += count

    take(vocab * dim, dim)
    take(layers * dim)  # attention norms
    for out, width in [(dim, dim), (kv_dim, dim), (kv_dim, dim), (dim, dim)]:
        take(layers * out * width, width)
    take(layers * dim)  # MLP norms
    for out, width in [(hidden, dim), (dim, hidden), (hidden, dim)]:
        take(layers * out * width, width)
    return rows


def errors(rows, bits):
    half = 1 << (bits - 1)
    signed = symmetric = 0.0
    for row in rows:
        for start in range(0, len(row), GROUP):
            group = row[start:start + GROUP]
            largest = max(group, key=abs)
            if largest == 0.0:
                continue
            step = largest / -half  # signed: the largest weight lands on level -half exactly
            signed += sum((min(max(round(v / step), -half), half - 1) * step - v) ** 2 for v in group)
            reach = half - 0.5
            step = abs(largest) / reach  # symmetric midrise: no sign to store
            symmetric += sum((min(max(math.floor(v / step) + 0.5, -reach), reach) * step - v) ** 2 for v in group)
    return signed, symmetric


def main():
    rows = matrices(sys.argv[1])
    bought_back = 10 ** (-6.02 / 32 / 10)  # the error ratio 1/32 bit per weight buys at 6.02 dB per bit
    print(f"{'bits':>4}  {'signed (Q4_0 grid)':>18}  {'symmetric, no sign':>18}  ratio  (the sign bit's rate buys {bought_back:.3f})")
    for bits in (3, 4, 5):
        signed, symmetric = errors(rows, bits)
        print(f"{bits:>4}  {signed:18.6e}  {symmetric:18.6e}  {symmetric / signed:.3f}")


if __name__ == "__main__":
    main()
