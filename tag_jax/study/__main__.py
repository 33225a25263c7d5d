"""python -m tag_jax.study --config=configs/synthetic_study.py --workdir=runs/s."""

from tag_jax import cli
from tag_jax.study.run import run_study

if __name__ == "__main__":
    cli.run(run_study)
