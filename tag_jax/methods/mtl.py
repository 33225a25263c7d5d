"""'mtl': all tasks in one network, trained on the plain sum of task losses."""

from tag_jax import models, optim, steps
from tag_jax.methods.base import Method, one_network


def build(config, task_names, image_shape, steps_per_epoch) -> Method:
    model = models.create_model(config, len(task_names))
    optimizer = optim.create_optimizer(config, steps_per_epoch)
    return Method(
        init_state=lambda rng: steps.init_train_state(model, optimizer, rng, image_shape),
        train_step=steps.make_mtl_step(model, optimizer),
        eval_step=steps.make_eval_step(model),
        **one_network(len(task_names)),
    )
