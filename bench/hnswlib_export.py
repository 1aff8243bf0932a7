#!/usr/bin/env python3
"""Exports hnswlib's graph of Fashion-MNIST for `themis-vector-bench
--other-graph` (issue 13): THEMIS's search code then walks hnswlib's own
graph, which tells a difference in the graphs from one in the search code.

Builds (or loads) hnswlib's index (M=16, ef_construction=200, seed 1, as
bench/vectors.py does), saves it to <dir>/hnswlib.bin, prints its mean
layer-0 degree, and writes <dir>/hnswlib.graph: little-endian u64 n, u64
entry label, then per point: u64 label, u32 layer-0 degree and the links
(u64 labels), u32 upper layers and for each: u32 degree and the links.
The format read is hnswlib 0.8's saveIndex.

    python3 bench/hnswlib_export.py <dir>
"""
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vectors as V  # noqa: E402
import hnswlib  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
base = V.idx_images(f"{V.DATA}/train-images-idx3-ubyte.gz")
path = os.path.join(out, "hnswlib.bin")
h = hnswlib.Index(space="l2", dim=base.shape[1])
if os.path.exists(path):
    h.load_index(path, max_elements=len(base))
else:
    h.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=1)
    t = time.time()
    h.add_items(base, np.arange(len(base)), num_threads=os.cpu_count())
    print(f"build {time.time() - t:.1f}s")
    h.save_index(path)

raw = open(path, "rb").read()
off = 0


def rd(fmt):
    global off
    v = struct.unpack_from(fmt, raw, off)
    off += struct.calcsize(fmt)
    return v[0]


_offset_level0, _max_el, n, size_per, label_off, _off_data = (rd("<Q") for _ in range(6))
_max_level, entry = rd("<i"), rd("<I")
max_m, max_m0, _m, _mult, _efc = rd("<Q"), rd("<Q"), rd("<Q"), rd("<d"), rd("<Q")
l0 = np.frombuffer(raw, dtype=np.uint8, count=n * size_per, offset=off).reshape(n, size_per)
off += n * size_per
count = l0[:, 0:2].copy().view(np.uint16).reshape(n)
links = l0[:, 4 : 4 + 4 * max_m0].copy().view(np.uint32).reshape(n, max_m0)
labels = l0[:, label_off : label_off + 8].copy().view(np.uint64).reshape(n)
print(f"hnswlib layer-0 links per point: {count.mean():.1f}")
upper = []
for i in range(n):
    size = rd("<I")
    block = max_m * 4 + 4
    lists = []
    for level in range(size // block):
        b = raw[off + level * block : off + (level + 1) * block]
        c = struct.unpack_from("<H", b, 0)[0]
        lists.append(list(struct.unpack_from(f"<{c}I", b, 4)))
    off += size
    upper.append(lists)
with open(os.path.join(out, "hnswlib.graph"), "wb") as f:
    f.write(struct.pack("<QQ", n, int(labels[entry])))
    for i in range(n):
        f.write(struct.pack("<QI", int(labels[i]), int(count[i])))
        f.write(labels[links[i, : count[i]]].astype(np.uint64).tobytes())
        f.write(struct.pack("<I", len(upper[i])))
        for ls in upper[i]:
            f.write(struct.pack("<I", len(ls)))
            f.write(labels[np.array(ls, dtype=np.int64)].astype(np.uint64).tobytes() if ls else b"")
print(f"wrote {os.path.join(out, 'hnswlib.graph')}")
