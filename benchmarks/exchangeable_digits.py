"""Nine exchangeable copies of one real task, as an .npz: a grouping case whose answer is known.

  python benchmarks/exchangeable_digits.py --out runs/exchangeable_digits.npz
  python -m tag_jax.main --config=configs/npz_tag.py --workdir=runs/copies \
      --config.dataset.path=runs/exchangeable_digits.npz

The images are the offline `digits` dataset's (tag_jax.data.digits, 8x8, its fixed 80/10/10
split); every task is the same attribute, "is the digit odd?". Copy c has its own 10% of
training labels flipped (a seeded draw per copy); validation and test labels are clean. The
copies are exchangeable by construction, so no grouping of them can be better than another:
a run's grouping of them should come with a low confidence ("no preferred grouping").
"""

import argparse
import os

import numpy as np

from tag_jax.data import digits, npz

NUM_COPIES = 9
FLIP_SHARE = 0.10
ATTRIBUTE = "odd"


def copies(digit, split, num_copies=NUM_COPIES, flip_share=FLIP_SHARE, seed=0):
    """(labels (N, num_copies) int32, task names): "is the digit odd?" per copy, each copy's
    own `flip_share` of training labels (split == 0) flipped; other splits clean."""
    clean = (digit % 2 == 1).astype(np.int32)
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(split == 0)
    labels = np.repeat(clean[:, None], num_copies, axis=1)
    for c in range(num_copies):
        flipped = rng.choice(train, size=round(flip_share * len(train)), replace=False)
        labels[flipped, c] = 1 - labels[flipped, c]
    return labels, [f"{ATTRIBUTE}_copy{c}" for c in range(num_copies)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/exchangeable_digits.npz")
    parser.add_argument("--seed", type=int, default=0, help="draws the flipped labels")
    args = parser.parse_args(argv)
    images, one_vs_rest = digits.arrays(8)
    digit = one_vs_rest.argmax(axis=1)
    split = npz.default_split(len(digit))
    labels, names = copies(digit, split, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(
        args.out,
        images=np.round(images * 255).astype(np.uint8),
        labels=labels,
        task_names=np.array(names),
        split=split,
    )
    flipped = (labels[split == 0] != (digit[split == 0] % 2 == 1)[:, None]).mean(axis=0)
    print(
        f"wrote {args.out}: {len(labels)} images, {len(names)} copies of '{ATTRIBUTE}', "
        f"training labels flipped per copy: {np.round(flipped, 3).tolist()}"
    )


if __name__ == "__main__":
    main()
