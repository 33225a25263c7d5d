"""'groups', 'pairs', 'random': one network per task group, all trained in ONE run.

Every network is the usual `models.MultiTaskNet` (trunk + heads for all T
tasks). Their parameters are stacked on a leading network axis (G, ...) and all
start from the same initialisation (config.seed), so network g trains exactly
as a run of group g alone would: its loss is the sum of its MEMBER tasks'
losses (masks (G, T)); networks share no parameter, so one gradient of the sum
over networks is every network's own gradient. Which networks:
- 'groups': `config.groups.groups` (task-name lists), or the selection with
  k = `config.groups.max_groups` of the groups.json `config.groups.groups_file`
  (TAG, CS, HOA or DMTG; 0 = its only selection).
- 'random': a seeded random split of the tasks into
  `config.groups.num_random_groups` non-empty groups (`random_partition`).
- 'pairs' (HOA, Standley et al.): the T single-task networks, then every pair.
  A single-task network here is the same network as a pair's (not the
  half-size, cost-0.5 network of Standley's setting).

Serving: each task is evaluated on ONE network: the one groups.json assigns it
to, else the first listed network containing it (for 'pairs': its single-task
network). The loop's eval_step returns those networks' sums (T,), so
results.json, Total Error and the loop's bookkeeping are unchanged.

Early stopping is per network, as separate runs would do it: after every epoch
all networks are evaluated on the validation split (a second pass, besides the
loop's), network g's loss is the sum of its members' losses, its best
parameters are kept (state.tracker, copied to state.best_params), and after
config.early_stopping.patience epochs without improvement its best parameters
are frozen (it still trains, unused). The run stops when every network has
stopped. meta['network_best_epoch'] records each network's best epoch;
results.json's 'best_epoch' stays the loop's (summed serving loss).

Forwards of the G networks: `config.groups.network_strategy` 'vmap' or
'unrolled' (a Python loop), the same numbers either way. 'auto' picks
'unrolled' only for XLA's convolution on CPU (vmapped over stacked kernels it
ran 17x slower than unrolled there); with im2col (config.model.conv 'auto' on
CPU) the vmapped matmuls stepped within 20% of unrolled at G = 2-9 and
compiled 2-5x faster, so 'vmap'; on GPU/TPU 'vmap'. With config.mesh.networks
> 1 the network axis of every state array is split over the 'networks' mesh axis.

Outputs: `groups_trained.json` ({method, tasks, groups, serving {task: group},
network_best_epoch}); 'pairs' also `pairs.json` (the pairwise table of
validation/test loss and error % in the selection package's orientation,
scores[t][u] = value of t in the network trained on {t, u}, diagonal = t
alone) and `groups.json` (HOA selection for each k of
config.selection.max_groups, minimising the validation `config.groups.hoa_score`).
"""

import dataclasses
import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tag_jax import data, grouping, models, optim, reporting, sharding, steps, train
from tag_jax.errors import UserError
from tag_jax.methods import Method
from tag_jax.methods.dmtg import map_branches, tile

NETWORK_STRATEGIES = ("auto", "vmap", "unrolled")
HOA_SCORES = ("loss", "error")


def validate(config) -> None:
  cfg = config.groups
  if cfg.network_strategy not in NETWORK_STRATEGIES:
    raise UserError(f"unknown config.groups.network_strategy {cfg.network_strategy!r}; "
                    f"choose one of {NETWORK_STRATEGIES}")
  if config.method == "groups" and bool(cfg.groups) == bool(cfg.groups_file):
    raise UserError("config.method='groups' needs exactly one of config.groups.groups (task-name "
                    "lists) and config.groups.groups_file (a groups.json)")
  if config.method == "groups" and cfg.groups_file and not os.path.isfile(cfg.groups_file):
    raise UserError(f"config.groups.groups_file {cfg.groups_file!r} does not exist")
  if config.method == "random" and cfg.num_random_groups < 1:
    raise UserError(f"config.groups.num_random_groups must be >= 1, got {cfg.num_random_groups}")
  if config.method == "pairs" and cfg.hoa_score not in HOA_SCORES:
    raise UserError(f"unknown config.groups.hoa_score {cfg.hoa_score!r}; choose one of {HOA_SCORES}")
  if config.method == "pairs" and jax.process_count() > 1:
    raise UserError("config.method='pairs' evaluates its networks in the loop's finish, which runs "
                    "on process 0 only: run it in a single process (any number of devices)")


def build(config, task_names, image_shape, steps_per_epoch) -> Method:
  networks, serving = networks_to_train(config, task_names)
  masks = membership_masks(networks, task_names)
  model = models.create_model(config, len(task_names))
  nets = StackedNets(model, len(networks),
                     resolve_network_strategy(config.groups.network_strategy, model.conv))
  optimizer = optim.create_optimizer(config.optimizer, steps_per_epoch)
  evaluate_networks = make_network_evaluator(config, nets)

  def init_state(rng):
    state = steps.init_train_state(nets, optimizer, rng, image_shape)
    return state.replace(tracker={"best_params": steps.copy_tree(state.params),
                                  "best_batch_stats": steps.copy_tree(state.batch_stats)})

  def on_epoch_end(state, meta):
    validation = evaluate_networks(state.params, state.batch_stats, "validation")
    network_loss = (masks * np.asarray(validation["task_loss"])).sum(1)
    return keep_best_networks(state, meta, network_loss, config.early_stopping.patience)

  def finish(workdir, state, meta):
    summary = write_groups_trained(workdir, config.method, task_names, networks, serving, meta)
    if config.method == "pairs":
      params, batch_stats = ((state.best_params, state.best_batch_stats)
                             if config.early_stopping.restore_best
                             else (state.params, state.batch_stats))
      summary.update(write_pairs_outputs(
          workdir, config, task_names, networks,
          {split: evaluate_networks(params, batch_stats, split) for split in ("validation", "test")}))
    return summary

  return Method(
      init_state=init_state,
      train_step=make_groups_step(nets, optimizer, masks),
      eval_step=make_serving_eval_step(nets, serving),
      on_epoch_end=on_epoch_end,
      finish=finish,
      state_sharding=functools.partial(network_axis_sharding, init_state, len(networks)))


# --- which networks, which tasks they serve ---


def networks_to_train(config, task_names) -> tuple[list, np.ndarray]:
  """(networks: G lists of task names, serving: (T,) index of the network serving each task)."""
  cfg = config.groups
  assignment = None
  if config.method == "pairs":
    networks = pair_networks(task_names)
  elif config.method == "random":
    networks = random_partition(task_names, cfg.num_random_groups, cfg.random_seed)
  elif cfg.groups_file:
    networks, assignment = load_selection(cfg.groups_file, cfg.max_groups)
  else:
    networks = [list(g) for g in cfg.groups]
  check_groups(networks, task_names)
  return networks, serving_networks(networks, task_names, assignment)


def pair_networks(task_names) -> list:
  """HOA's networks: [t] for every task, then [t, u] for every pair t < u (T + T(T-1)/2)."""
  return [[t] for t in task_names] + [list(p) for p in itertools.combinations(task_names, 2)]


def random_partition(task_names, num_groups: int, seed: int) -> list:
  """A seeded random split into `num_groups` non-empty groups, each in task order, listed by first task.

  np.random.default_rng(seed) permutes the tasks; the first k of the permutation
  open one group each, every other task joins a group drawn uniformly.
  """
  num_tasks = len(task_names)
  if not 1 <= num_groups <= num_tasks:
    raise UserError(f"config.groups.num_random_groups {num_groups} must be in [1, {num_tasks}] "
                    f"for {num_tasks} tasks")
  rng = np.random.default_rng(seed)
  order = rng.permutation(num_tasks)
  group_of = np.empty(num_tasks, int)
  group_of[order[:num_groups]] = np.arange(num_groups)
  group_of[order[num_groups:]] = rng.integers(0, num_groups, num_tasks - num_groups)
  groups = [[t for t, g in zip(task_names, group_of) if g == k] for k in range(num_groups)]
  return sorted(groups, key=lambda g: list(task_names).index(g[0]))


def load_selection(path: str, max_groups: int) -> tuple[list, dict]:
  """(groups, assignment {task: serving group}) of the selection with k = max_groups in groups.json.

  max_groups 0 takes the file's only selection.
  """
  try:
    with open(path) as f:
      selections = json.load(f)["selections"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"config.groups.groups_file {path!r} is not a readable groups.json ({e})") from e
  available = [s["max_groups"] for s in selections]
  if max_groups == 0 and len(selections) == 1:
    chosen = selections[0]
  elif max_groups in available:
    chosen = selections[available.index(max_groups)]
  else:
    raise UserError(f"{path} has selections for k in {available}; set config.groups.max_groups "
                    "to one of them")
  return [list(g) for g in chosen["groups"]], chosen.get("assignment")


def check_groups(networks, task_names) -> None:
  """UserError for an empty group, an unknown or repeated task name, or a task in no group."""
  for group in networks:
    unknown = [t for t in group if t not in task_names]
    if not group or unknown or len(set(group)) != len(group):
      raise UserError(f"group {list(group)} must be non-empty, without repeats, of tasks in "
                      f"{list(task_names)}")
  uncovered = [t for t in task_names if not any(t in g for g in networks)]
  if uncovered:
    raise UserError(f"task(s) {uncovered} are in no group; add them to a group or restrict "
                    "config.tasks")


def serving_networks(networks, task_names, assignment=None) -> np.ndarray:
  """(T,) index of the network serving each task: assignment[t] if given, else the first containing t."""
  if assignment:
    return np.array([networks.index(list(assignment[t])) for t in task_names])
  return np.array([next(g for g, members in enumerate(networks) if t in members)
                   for t in task_names])


def membership_masks(networks, task_names) -> np.ndarray:
  """(G, T) float32: 1 where task t is a member of network g."""
  return np.array([[t in members for t in task_names] for members in networks], np.float32)


# --- the stacked networks and their steps ---


def resolve_network_strategy(name: str, conv: str) -> str:
  """'auto' -> 'unrolled' for conv 'xla' on CPU, else 'vmap' (module docstring); conv is resolved."""
  if name == "auto":
    return "unrolled" if conv == "xla" and jax.default_backend() == "cpu" else "vmap"
  return name


@dataclasses.dataclass(frozen=True)
class StackedNets:
  """G copies of one MultiTaskNet, parameters and batch statistics stacked (G, ...).

  `init` has the Flax signature steps.init_train_state uses; every copy starts
  from the same initialisation. strategy: 'vmap' | 'unrolled' (dmtg.map_branches).
  """

  model: models.MultiTaskNet
  num_networks: int
  strategy: str

  def init(self, rng, image, *, train: bool = False) -> dict:
    return tile(self.model.init(rng, image, train=train), self.num_networks)

  def task_losses(self, params, batch_stats, batch):
    """Training forward of every network: losses (G, T), updated batch statistics (G, ...)."""
    return map_branches(lambda p, s: steps.task_losses(self.model, p, s, batch), self.strategy,
                        params, batch_stats)

  def eval_sums(self, params, batch_stats, batch) -> dict:
    """Every network's sums on a padded batch: loss_sum (G, T), correct (G, T), count ()."""
    eval_one = steps.make_eval_step(self.model)
    sums = map_branches(lambda p, s: eval_one(p, s, batch), self.strategy, params, batch_stats)
    return {**sums, "count": sums["count"][0]}


def member_mean(losses, masks):
  """(T,) mean of each task's loss over the networks training it; a NaN anywhere shows."""
  return jnp.where(masks > 0, losses, 0.0).sum(0) / masks.sum(0)


def make_groups_step(nets: StackedNets, optimizer, masks):
  """One step of every network on its members' loss sum.

  metrics: loss () = sum over networks; task_losses (T,) = member_mean (so the
  loop's finiteness check sees every network).
  """
  masks = jnp.asarray(masks)

  def train_step(state: steps.TrainState, batch):
    def objective(params):
      losses, batch_stats = nets.task_losses(params, state.batch_stats, batch)
      return (masks * losses).sum(), (losses, batch_stats)
    grads, (losses, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
    state = steps.apply_gradients(state, optimizer, grads, batch_stats)
    return state, {"loss": (masks * losses).sum(), "task_losses": member_mean(losses, masks)}
  return train_step


def make_serving_eval_step(nets: StackedNets, serving: np.ndarray):
  """The loop's eval_step: sums of each task on its serving network (T,); only serving networks run."""
  used = sorted(set(serving.tolist()))
  position = np.array([used.index(g) for g in serving])
  tasks = np.arange(len(serving))

  def eval_step(params, batch_stats, batch):
    sums = nets.eval_sums(take_networks(params, used), take_networks(batch_stats, used), batch)
    return {"loss_sum": sums["loss_sum"][position, tasks],
            "correct": sums["correct"][position, tasks], "count": sums["count"]}
  return eval_step


def take_networks(tree, indices):
  """The networks `indices` of a stacked tree: leaves (G, ...) -> (len(indices), ...)."""
  return jax.tree.map(lambda a: a[np.asarray(indices)], tree)


def make_network_evaluator(config, nets: StackedNets):
  """evaluate_networks(params, batch_stats, split) -> train.evaluate's dict, task_loss and
  task_accuracy (G, T). The dataset and mesh (which the Method interface does not pass)
  are loaded on first use."""
  @functools.cache
  def context():
    mesh = sharding.create_mesh(config.mesh)
    return (data.load_dataset(config), mesh,
            jax.jit(nets.eval_sums, out_shardings=sharding.replicated(mesh)))

  def evaluate_networks(params, batch_stats, split):
    dataset, mesh, eval_sums = context()
    return train.evaluate(eval_sums, params, batch_stats, dataset, split, config, mesh)
  return evaluate_networks


def network_axis_sharding(init_state, num_networks: int, mesh):
  """Every non-scalar state array (all are stacked (G, ...)) split over 'networks'; scalars replicated."""
  split = mesh.shape[sharding.NETWORKS]
  if num_networks % split:
    raise UserError(f"{num_networks} networks cannot be split evenly over config.mesh.networks="
                    f"{split}; choose a divisor of {num_networks}")
  shapes = jax.eval_shape(init_state, jax.random.key(0))
  return jax.tree.map(lambda leaf: NamedSharding(mesh, P(sharding.NETWORKS) if leaf.ndim else P()),
                      shapes)


# --- per-network early stopping ---


@jax.jit
def where_improved(improved, new, old):
  """Leaves of `new` for networks where improved (G,) is true, else of `old`."""
  return jax.tree.map(
      lambda a, b: jnp.where(improved.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def keep_best_networks(state, meta, network_loss: np.ndarray, patience: int):
  """Per-network early stopping (module docstring); network_loss (G,) this epoch's validation loss."""
  num_networks = len(network_loss)
  best = np.array(meta.get("network_best_loss", [np.inf] * num_networks))
  waited = np.array(meta.get("network_epochs_without_improvement", [0] * num_networks))
  best_epoch = np.array(meta.get("network_best_epoch", [0] * num_networks))
  active = waited < patience if patience else np.ones(num_networks, bool)
  improved = active & (network_loss < best)
  best = np.where(improved, network_loss, best)
  waited = np.where(improved, 0, waited + 1)
  best_epoch = np.where(improved, meta["epoch"] + 1, best_epoch)
  tracker = where_improved(jnp.asarray(improved),
                            {"best_params": state.params, "best_batch_stats": state.batch_stats},
                            state.tracker)
  meta.update(network_best_loss=best.tolist(), network_best_epoch=best_epoch.tolist(),
              network_epochs_without_improvement=waited.tolist(),
              epochs_without_improvement=int(waited.min()),
              stopped_early=bool(patience) and bool((waited >= patience).all()))
  return state.replace(tracker=tracker, best_params=steps.copy_tree(tracker["best_params"]),
                       best_batch_stats=steps.copy_tree(tracker["best_batch_stats"]))


# --- outputs ---


def write_groups_trained(workdir, method, task_names, networks, serving, meta) -> dict:
  record = {"method": method, "tasks": list(task_names), "groups": networks,
            "serving": {t: networks[g] for t, g in zip(task_names, serving)},
            "network_best_epoch": meta.get("network_best_epoch")}
  reporting.write_json_atomic(os.path.join(workdir, "groups_trained.json"), record)
  return {"groups_trained": record}


def pairwise_table(task_names, networks, values) -> dict:
  """{t: {u: values[network {t, u}, t]}}, diagonal from the single-task networks; values (G, T)."""
  index = {t: i for i, t in enumerate(task_names)}
  table = {t: {} for t in task_names}
  for g, members in enumerate(networks):
    for t in members:
      partner = next((u for u in members if u != t), t)
      table[t][partner] = float(values[g][index[t]])
  return {t: {u: table[t][u] for u in task_names} for t in task_names}


def pairs_record(task_names, networks, evaluations: dict) -> dict:
  """pairs.json from {'validation', 'test'} -> train.evaluate dicts with (G, T) entries."""
  record = {"tasks": list(task_names)}
  for split, result in evaluations.items():
    record[f"{split}_loss"] = pairwise_table(task_names, networks, result["task_loss"])
    error = 100.0 * (1.0 - np.asarray(result["task_accuracy"]))
    record[f"{split}_error"] = pairwise_table(task_names, networks, error)
  record["orientation"] = ("scores[t][u] = value of t in the network trained on {t, u}; "
                           "diagonal = t alone")
  return record


def write_pairs_outputs(workdir, config, task_names, networks, evaluations) -> dict:
  """pairs.json, then HOA's groups.json: selection for each k minimising validation_<hoa_score>."""
  record = pairs_record(task_names, networks, evaluations)
  reporting.write_json_atomic(os.path.join(workdir, "pairs.json"), record)
  key = f"validation_{config.groups.hoa_score}"
  selections = grouping.select_for_each_k(
      task_names, [[record[key][t][u] for u in task_names] for t in task_names],
      config.selection.max_groups, objective="minimize", singletons="diagonal",
      time_limit=config.selection.time_limit)
  groups = grouping.write_groups(workdir, "hoa", task_names, selections, objective="minimize",
                                 scores=f"pairs.json {key} (scores[t][u] = t trained with u)")
  return {"pairs": record, "groups": groups}
