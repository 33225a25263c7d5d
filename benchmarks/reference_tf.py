"""The TAG reference's step structure in TensorFlow 2 graph mode, on the project's trunk.

Written for measurement (benchmarks/compare_reference.py), after the TAG CelebA code's
structure: one persistent tape over the task losses, one tape gradient per task for the
trunk, and a functional lookahead forward per source with the trunk's weights moved by that
task's step (theta - lr g_t; the affinity divided by lr, as that code does). Same trunk as
tag_jax.models.Trunk: conv3x3(width, no bias) -> BN -> ReLU -> maxpool 3x3/2 VALID ->
[conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + identity] -> ReLU -> avgpool 2x2/2 -> flatten;
one Dense(2) head per task; softmax cross-entropy; batch-norm on batch statistics.
"""

import tensorflow as tf


class ReferenceNet:
    """Variables of the trunk (3 kernels, 3 BN scale/offset pairs) and the stacked heads."""

    def __init__(
        self, *, image_size: int, channels: int, width: int, num_tasks: int, seed: int = 0
    ):
        init = tf.keras.initializers.GlorotUniform(seed=seed)
        feature_side = ((image_size - 3) // 2 + 1) // 2
        features = feature_side * feature_side * width
        self.trunk = [
            tf.Variable(init((3, 3, channels, width))),
            tf.Variable(init((3, 3, width, width))),
            tf.Variable(init((3, 3, width, width))),
        ]
        self.trunk += [tf.Variable(tf.ones(width)) for _ in range(3)]
        self.trunk += [tf.Variable(tf.zeros(width)) for _ in range(3)]
        self.head_kernel = tf.Variable(init((num_tasks, features, 2)))
        self.head_bias = tf.Variable(tf.zeros((num_tasks, 2)))
        self.variables = self.trunk + [self.head_kernel, self.head_bias]


def _batch_norm(x, scale, offset):
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    return tf.nn.batch_normalization(x, mean, variance, offset, scale, 1e-3)


def trunk_forward(trunk, images):
    """(B, S, S, C) -> (B, F) with the given trunk weights (a list like ReferenceNet.trunk)."""
    k0, k1, k2, s0, s1, s2, o0, o1, o2 = trunk
    x = tf.nn.relu(_batch_norm(tf.nn.conv2d(images, k0, 1, "SAME"), s0, o0))
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    residual = x
    x = tf.nn.relu(_batch_norm(tf.nn.conv2d(x, k1, 1, "SAME"), s1, o1))
    x = _batch_norm(tf.nn.conv2d(x, k2, 1, "SAME"), s2, o2)
    x = tf.nn.avg_pool2d(tf.nn.relu(x + residual), 2, 2, "VALID")
    return tf.reshape(x, (tf.shape(x)[0], -1))


def task_losses(net, trunk, images, labels):
    """(T,) mean softmax cross-entropy of every task head on the trunk's features."""
    logits = tf.einsum("bf,tfc->btc", trunk_forward(trunk, images), net.head_kernel) + net.head_bias
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(nll, axis=0)


def make_steps(net, *, learning_rate: float = 0.01, momentum: float = 0.9, xla: bool = False):
    """(plain_step, tag_step, cs_step) as tf.functions of (images, labels)."""
    velocity = [tf.Variable(tf.zeros_like(v)) for v in net.variables]
    num_tasks = net.head_kernel.shape[0]

    def apply(grads):
        """SGD with momentum, TF's form: v <- m v + g; w <- w - lr v."""
        for w, v, g in zip(net.variables, velocity, grads):
            v.assign(momentum * v + g)
            w.assign_sub(learning_rate * v)

    def plain(images, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(task_losses(net, net.trunk, images, labels))
        apply(tape.gradient(loss, net.variables))
        return loss

    def per_task(images, labels):
        with tf.GradientTape(persistent=True) as tape:
            losses = task_losses(net, net.trunk, images, labels)
            terms = [losses[t] for t in range(num_tasks)]
            loss = tf.reduce_sum(losses)
        grads = [tape.gradient(term, net.trunk) for term in terms]
        total = tape.gradient(loss, net.variables)
        del tape
        return losses, grads, total

    def tag(images, labels):
        losses, grads, total = per_task(images, labels)
        rows = []
        for t in range(num_tasks):
            moved = [w - learning_rate * g for w, g in zip(net.trunk, grads[t])]
            rows.append(1.0 - task_losses(net, moved, images, labels) / losses)
        apply(total)
        return tf.stack(rows) / learning_rate

    def cs(images, labels):
        _, grads, total = per_task(images, labels)
        flat = tf.stack([tf.concat([tf.reshape(g, [-1]) for g in task[:3]], 0) for task in grads])
        unit = tf.math.l2_normalize(flat, axis=1)
        apply(total)
        return unit @ tf.transpose(unit)

    return tuple(tf.function(fn, jit_compile=xla) for fn in (plain, tag, cs))
