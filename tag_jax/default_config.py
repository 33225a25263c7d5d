"""The base experiment config: every key any method reads, its default, and what a valid value is.

The defaults are the published CelebA setting of TAG and DMTG (docs/reference.md#celeba-setting).
Each common block (the top-level keys, dataset, model, optimizer, early stopping, study, mesh)
is made by its own function here, with its schema (`config_checks.Block`) below it; the blocks
methods own come from their modules through the registry (tag_jax.methods). Experiment files in
`configs/` start from `get_base_config()` (or the presets below) and change what they need;
`--config.key=value` overrides anything.
"""

import jax
import ml_collections

from tag_jax import config_checks, data, methods, models, optim
from tag_jax.config_checks import (
    BOOL,
    GROUP_SIZES,
    KS,
    NON_NEGATIVE,
    PATH,
    POSITIVE,
    SEED,
    TASK_NAMES,
    Block,
    Choice,
    integer,
    minus_one_or_positive,
    number,
)
from tag_jax.errors import UserError

DTYPES = ("float32", "bfloat16")


def batch_divides_over_processes(config) -> None:
    if config.batch_size % jax.process_count():
        raise UserError(
            f"config.batch_size {config.batch_size} must be divisible by the "
            f"{jax.process_count()} processes"
        )


TOP = Block(
    "",
    None,  # set in get_base_config; config.method is checked by the registry (tag_jax.methods)
    {
        "seed": SEED,
        "tasks": TASK_NAMES,
        "image_size": integer(5, 4096),  # the trunk needs 5x5 pixels (models.MIN_IMAGE_SIZE)
        "dtype": Choice(DTYPES),
        "autotune_budget_seconds": number(0),
        "batch_size": POSITIVE,
        "eval_batch_size": POSITIVE,
        "drop_remainder": BOOL,
        "prefetch_batches": NON_NEGATIVE,
        "num_epochs": POSITIVE,
        "min_train_steps": NON_NEGATIVE,
        "max_steps": minus_one_or_positive("no limit"),
        "log_every_steps": POSITIVE,
        "checkpoint_every_steps": NON_NEGATIVE,
        "keep_checkpoints": POSITIVE,
    },
    rules=(batch_divides_over_processes,),
)


def dataset_config() -> ml_collections.ConfigDict:
    """config.dataset: which data, and the synthetic generator's settings."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "synthetic"  # 'synthetic' | 'npz' | 'digits' | 'celeb_a'
    cfg.path = ""  # npz: path of the .npz file.
    cfg.data_dir = ""  # celeb_a: TFDS data_dir ('' = TFDS default).
    cfg.num_train = 4096  # synthetic sizes
    cfg.num_validation = 512
    cfg.num_test = 512
    cfg.group_sizes = (3, 3, 3)  # synthetic: planted task groups.
    cfg.noise = 0.5  # synthetic: pixel noise std.
    cfg.task_noise = 0.05  # synthetic: std of each task's own noise on its group factor.
    cfg.label_noise = 0.02  # synthetic: fraction of flipped labels.
    cfg.data_seed = 0  # synthetic: generator seed (independent of config.seed).
    cfg.num_workers = 4  # celeb_a: reader threads.
    cfg.cache_dir = ""  # celeb_a: resized uint8 images ('' = in data_dir; 'none' = off)
    return cfg


DATASET = Block(
    "dataset",
    dataset_config,
    {
        "name": Choice(data.DATASETS),
        "path": PATH,
        "data_dir": PATH,
        "num_train": POSITIVE,
        "num_validation": POSITIVE,
        "num_test": POSITIVE,
        "group_sizes": GROUP_SIZES,
        "noise": number(0),
        "task_noise": number(0),
        "label_noise": number(0, 1),
        "data_seed": SEED,
        "num_workers": POSITIVE,
        "cache_dir": config_checks.Valid(
            "a path (text), '' (next to the TFDS data) or 'none'", lambda v: isinstance(v, str)
        ),
    },
)


def model_config() -> ml_collections.ConfigDict:
    """config.model: the trunk and heads (tag_jax.models)."""
    cfg = ml_collections.ConfigDict()
    cfg.width = 64  # filters of every trunk convolution
    # 'xla' | 'xla_threaded' (CPU: XLA's own multithreaded kernels, tag_jax/models.py) | 'im2col' |
    # 'auto' (timed on the run's shapes, cached: tag_jax/autotune.py)
    cfg.conv = "auto"
    cfg.bn_epsilon = 1e-3  # TF reference; the PyTorch reference uses 1e-5
    cfg.bn_momentum = 0.99  # running-average decay (TF default)
    cfg.num_classes = 2  # logits per task head
    return cfg


MODEL = Block(
    "model",
    model_config,
    {
        "width": integer(1, 4096),
        "conv": Choice(models.CONV_IMPLS),
        "bn_epsilon": number(0, low_open=True),
        "bn_momentum": number(0, 1, high_open=True),
        "num_classes": integer(2),
    },
)


def optimizer_config() -> ml_collections.ConfigDict:
    """config.optimizer: the model's optimizer and learning-rate schedule (tag_jax.optim)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "sgd"  # 'sgd' | 'adam'
    cfg.learning_rate = 5e-4
    cfg.momentum = 0.9  # sgd only; 0 = plain SGD
    cfg.weight_decay = 0.0  # L2 added to the gradient (coupled), like the references
    cfg.schedule = "step"  # 'step' | 'constant' | 'cosine' (to 0 at the last step)
    cfg.decay_every_epochs = 15  # 'step': multiply by decay_factor every this many epochs
    cfg.decay_factor = 0.5
    cfg.warmup_steps = 0  # linear warm-up of the learning rate over this many steps
    return cfg


OPTIMIZER = Block(
    "optimizer",
    optimizer_config,
    {
        "name": Choice(optim.OPTIMIZERS),
        "learning_rate": number(0, low_open=True),
        "momentum": number(0, 1, high_open=True),
        "weight_decay": number(0),
        "schedule": Choice(optim.SCHEDULES),
        "decay_every_epochs": number(0, low_open=True),
        "decay_factor": number(0, 1, low_open=True),
        "warmup_steps": NON_NEGATIVE,
    },
)


def early_stopping_config() -> ml_collections.ConfigDict:
    """config.early_stopping: per-network early stopping on the summed validation loss."""
    cfg = ml_collections.ConfigDict()
    cfg.patience = 10  # epochs without a better summed validation loss; 0 = off
    cfg.restore_best = True
    cfg.min_steps = 0  # no network stops before this many training steps
    return cfg


EARLY_STOPPING = Block(
    "early_stopping",
    early_stopping_config,
    {"patience": NON_NEGATIVE, "restore_best": BOOL, "min_steps": NON_NEGATIVE},
)


def study_config() -> ml_collections.ConfigDict:
    """config.study: the grouping study (python -m tag_jax.study), one stage per run."""
    cfg = ml_collections.ConfigDict()
    # The study methods to run, in this order (tag_jax.study.plan.STUDY_METHODS).
    cfg.methods = (
        "mtl",
        "single",
        "tag",
        "cs",
        "hoa",
        "random",
        "uw",
        "gradnorm",
        "pcgrad",
        "dmtg",
    )
    cfg.max_groups = (2, 3)  # k of every grouping method (and DMTG's num_groups)
    cfg.epochs_search = 0  # epochs of the TAG/CS/HOA/DMTG runs; 0 = config.num_epochs
    cfg.epochs_train = 0  # epochs of all other runs; 0 = config.num_epochs
    # Per study method, config changes for that method's own run(s) (not for retraining the
    # groups it selects), applied last: e.g. overrides.dmtg = DMTG_CELEBA_TRAINING.
    cfg.overrides = ml_collections.ConfigDict()
    # Every stage is run with seeds config.seed, config.seed + 1, ... (report: mean and spread).
    cfg.seeds = 1
    return cfg


STUDY = Block(
    "study",
    study_config,
    {  # methods and overrides: checked against the study's stages (tag_jax.study.plan)
        "max_groups": KS,
        "epochs_search": NON_NEGATIVE,
        "epochs_train": NON_NEGATIVE,
        "seeds": POSITIVE,
    },
)


def mesh_config() -> ml_collections.ConfigDict:
    """config.mesh: how the devices are split (tag_jax.sharding)."""
    cfg = ml_collections.ConfigDict()
    cfg.data = -1  # devices on the batch axis; -1 = all (divided by mesh.networks)
    cfg.networks = 1  # devices on the stacked-network axis (group/pair training)
    return cfg


MESH = Block(
    "mesh",
    mesh_config,
    {"data": minus_one_or_positive("all devices"), "networks": POSITIVE},
)

# The blocks every run reads; a method's own blocks are named by its registry entry.
COMMON_BLOCKS = (TOP, DATASET, MODEL, OPTIMIZER, EARLY_STOPPING, STUDY, MESH)


def blocks() -> tuple:
    """Every block of the base config: the common ones, then the methods' (tag_jax.methods)."""
    return COMMON_BLOCKS + methods.config_blocks()


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.method = "mtl"  # a name of tag_jax.methods.METHODS
    # Task names to train on, in this order; empty = every task of the dataset.
    config.tasks = ()
    config.dataset = dataset_config()
    # Side of the (square) images: synthetic ones are generated at it, celeb_a ones resized to it
    # (npz files keep their own size).
    config.image_size = 64
    config.model = model_config()
    # Compute dtype: 'float32' or 'bfloat16' (parameters, optimizer state and losses stay float32).
    config.dtype = "float32"
    # Most seconds timing the 'auto' settings may take in one run (tag_jax/autotune.py); once
    # spent, a setting takes the best candidate timed so far, or its rule when none was timed.
    config.autotune_budget_seconds = 180.0

    config.batch_size = 256  # global batch
    config.eval_batch_size = 256
    config.drop_remainder = False  # reference keeps the last partial batch
    # Batches read and copied to the device ahead of the step, in a background thread; 0 = none.
    config.prefetch_batches = 2
    config.num_epochs = 100
    # Train at least this many steps: epochs are added to config.num_epochs until they hold this
    # many (a small dataset still gets trained); 0 = exactly num_epochs.
    config.min_train_steps = 0
    config.max_steps = -1  # stop (after a checkpoint) at this global step; -1 = no limit

    config.optimizer = optimizer_config()
    config.early_stopping = early_stopping_config()
    # Method-owned blocks (config.affinity, selection, baselines, dmtg, groups, ...): defaults,
    # meanings and schemas in the method modules, named by their registry entries.
    for block in methods.config_blocks():
        config[block.name] = block.defaults()
    config.study = study_config()
    config.mesh = mesh_config()

    config.log_every_steps = 50
    config.checkpoint_every_steps = 0  # 0 = checkpoint at the end of every epoch only
    config.keep_checkpoints = 2
    return config


def get_synthetic_config() -> ml_collections.ConfigDict:
    """The quick start: the offline synthetic dataset, a narrow trunk, a few minutes on CPU."""
    config = get_base_config()
    config.dataset.name = "synthetic"
    config.image_size = 16
    config.model.width = 16
    config.batch_size = 64
    config.eval_batch_size = 256
    config.num_epochs = 8
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.1
    config.optimizer.decay_every_epochs = 4
    config.early_stopping.patience = 3
    config.log_every_steps = 20
    return config


def get_celeba_config() -> ml_collections.ConfigDict:
    """The published CelebA setting of TAG and DMTG, which the base defaults are.

    64x64 inputs, the 'ResNet18' trunk of width 64, SGD momentum 0.9, lr 5e-4
    halved every 15 epochs, batch 256 (last partial batch kept), up to 100 epochs,
    early stopping after 10 epochs without a better summed validation loss (best
    parameters restored). Tasks: the papers' nine.
    """
    from tag_jax.data.celeba import CELEBA_9  # pylint: disable=g-import-not-at-top (TFDS is slow)

    config = get_base_config()
    config.dataset.name = "celeb_a"
    config.tasks = CELEBA_9
    config.log_every_steps = 100
    return config


def get_many_tasks_config(num_groups: int) -> ml_collections.ConfigDict:
    """TAG with `num_groups` planted groups of 10 synthetic tasks, the first-order estimator, and
    the selection of that many groups (configs/synthetic_many_tasks*.py)."""
    config = get_synthetic_config()
    config.method = "tag"
    config.dataset.group_sizes = (10,) * num_groups
    config.dataset.num_train = 8192
    config.model.width = 32
    config.optimizer.learning_rate = 0.02  # the loss sums many tasks
    config.num_epochs = 12
    config.log_every_steps = 100
    config.affinity.every_n_steps = 10
    config.affinity.lookahead = "sgd"
    config.affinity.scale_by_lr = False
    config.affinity.estimator = "first_order"
    config.selection.max_groups = (num_groups,)
    return config


def get_npz_config() -> ml_collections.ConfigDict:
    """The recipe for your own .npz data, chosen on real data (the 'digits' dataset; numbers in
    configs/npz_mtl.py): Adam 1e-2 warmed up over 50 steps then cosine to 0, at least 1,000 steps
    and 10 epochs, batch 64, width 16, batch-norm momentum 0.9, early stopping (patience 10
    epochs) not before step 1,000, best validation epoch reported."""
    config = get_synthetic_config()
    config.dataset.name = "npz"
    config.model.width = 16
    config.model.bn_momentum = 0.9  # running averages settle within ~30 steps
    config.batch_size = 64
    config.num_epochs = 10
    config.min_train_steps = 1000  # a small dataset still gets 1,000 steps
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.01
    config.optimizer.warmup_steps = 50
    config.optimizer.schedule = "cosine"
    config.early_stopping.patience = 10
    config.early_stopping.min_steps = 1000
    return config


# DMTG's own training rules (docs/reference.md#dmtg-differentiable-grouping): no early stopping,
# the final network and grouping reported; on CelebA one Adam at 8e-4 for all parameters and the
# group logits (its other published values are the base defaults), at the synthetic data's scale
# Adam at 1e-2, constant.
DMTG_NPZ_TRAINING = {"early_stopping": {"patience": 0, "restore_best": False}}
DMTG_CELEBA_TRAINING = {
    "optimizer": {"name": "adam", "learning_rate": 8e-4},
    "early_stopping": {"patience": 0, "restore_best": False},
}
DMTG_SYNTHETIC_TRAINING = {
    "optimizer": {"name": "adam", "learning_rate": 0.01, "schedule": "constant"},
    "early_stopping": {"patience": 0, "restore_best": False},
}


def get_synthetic_dmtg_config() -> ml_collections.ConfigDict:
    """DMTG on the synthetic data, K = 2 for 2 planted groups of 3 (configs/synthetic_dmtg.py)."""
    config = get_synthetic_config()
    config.method = "dmtg"
    config.dataset.group_sizes = (3, 3)
    config.dataset.num_train = 16384
    config.model.width = 2
    config.batch_size = 32
    config.eval_batch_size = 512
    config.num_epochs = 1
    config.update(DMTG_SYNTHETIC_TRAINING)  # Adam 1e-2, no early stopping
    config.log_every_steps = 64
    config.dmtg.num_groups = len(config.dataset.group_sizes)
    return config


def use_tag_celeba_code_affinity(config: ml_collections.ConfigDict) -> None:
    """TAG's CelebA code: every step, the optimizer's next step with the momentum trace taken at
    coefficient 1.0 (its flag mix-up), divided by the learning rate. The paper's form instead:
    affinity.lookahead='sgd', every_n_steps=10, scale_by_lr=False."""
    config.affinity.lookahead = "momentum"
    config.affinity.momentum = 1.0
    config.affinity.every_n_steps = 1
    config.affinity.scale_by_lr = True
