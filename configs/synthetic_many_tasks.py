"""TAG at scale: 100 tasks in 10 planted groups of 10 on the offline synthetic data, with the
'first_order' affinity estimator (no lookahead forwards; `--config.affinity.estimator=sketched`
makes the measured step's cost independent of T), then the selection of 10 groups.

  python -m tag_jax.main --config=configs/synthetic_many_tasks.py --workdir=runs/many_tasks

Differs from the quick start where 100 tasks need it: the loss is a sum over tasks, so the
learning rate is lower (0.02); a wider trunk (32 filters), twice the training images and up to
12 epochs give the ten textures' features room. Logged every 100 steps (100 tasks per line).
"""

from tag_jax import default_config


def get_config():
    return default_config.get_many_tasks_config(10)
