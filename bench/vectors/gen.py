#!/usr/bin/env python3
"""Deterministic clustered vectors for bench/vectors.sh (no numpy).

  gen.py data N DIM OUT_DIR   -> OUT_DIR/put_0000.json … (PutVectors bodies,
                                 500 vectors each) and OUT_DIR/data.csv
                                 (key,[v1,…] rows for COPY)
  gen.py queries Q DIM OUT    -> OUT (one JSON list of Q query vectors)

Vectors are 100 Gaussian clusters (centres uniform in [-1, 1], noise 0.35)
from a fixed seed, rounded to 4 decimals; queries come from the same
distribution with another seed.
"""
import json
import os
import random
import sys

CLUSTERS = 100


def centres(dim):
    rng = random.Random(1)
    return [[rng.uniform(-1, 1) for _ in range(dim)] for _ in range(CLUSTERS)]


def vectors(n, dim, seed):
    cs = centres(dim)
    rng = random.Random(seed)
    for _ in range(n):
        c = cs[rng.randrange(CLUSTERS)]
        yield [round(x + rng.gauss(0, 0.35), 4) for x in c]


def main():
    kind = sys.argv[1]
    if kind == "data":
        n, dim, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        os.makedirs(out, exist_ok=True)
        batch, part = [], 0
        with open(os.path.join(out, "data.csv"), "w") as csv:
            for i, v in enumerate(vectors(n, dim, 2)):
                key = f"v{i:06d}"
                text = "[" + ",".join(map(str, v)) + "]"
                csv.write(f'{key}\t{text}\t{{"cluster_mod": {i % 10}}}\n')
                batch.append(f'{{"key":"{key}","data":{{"float32":{text}}},"metadata":{{"cluster_mod":{i % 10}}}}}')
                if len(batch) == 500:
                    write_batch(out, part, batch)
                    batch, part = [], part + 1
            if batch:
                write_batch(out, part, batch)
    else:
        q, dim, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        with open(out, "w") as f:
            json.dump(list(vectors(q, dim, 3)), f)


def write_batch(out, part, batch):
    body = '{"vectorBucketName":"bench","indexName":"api","vectors":[' + ",".join(batch) + "]}"
    with open(os.path.join(out, f"put_{part:04d}.json"), "w") as f:
        f.write(body)


if __name__ == "__main__":
    main()
