"""Command line: python -m tag_jax.main --config=configs/synthetic_mtl.py --workdir=runs/x
[--config.k=v]."""

from tag_jax import cli


def train_and_evaluate(config, workdir, restart=False):
    from tag_jax import train  # pylint: disable=g-import-not-at-top (JAX, the methods: slow)

    return train.train_and_evaluate(config, workdir, restart=restart)


if __name__ == "__main__":
    cli.run(train_and_evaluate)
