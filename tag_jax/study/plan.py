"""The study's plan: which stages (runs) a study makes and which report rows they feed.

`build_plan(config, task_names, workdir)` turns config.study into `Stage`s (one training run each,
the config with a few keys changed) and `Entry`s (one seed's run of a report row); `PLANNERS`
maps each study method to the function that adds its stages and rows. Pure: no JAX, no I/O.
"""

import dataclasses
import os

from tag_jax.errors import UserError

GROUPING_LABELS = (
    "tag",
    "cs",
    "hoa",
    "random",
    "dmtg",
    "dmtg one-shot",
)  # rows with a planted check


@dataclasses.dataclass(frozen=True)
class Stage:
    """One run: its folder name, config changes (flattened keys), whether it is a grouping run, the
    study method whose config.study.overrides apply ('' = none), and whether its seeds can train
    side by side in one run (a 'groups'/'random' run whose networks no seed changes)."""

    name: str
    settings: dict
    search: bool = False
    method: str = ""
    stackable: bool = False


@dataclasses.dataclass(frozen=True)
class Entry:
    """One seed's run of a report row: `share` of the compute of `stages` spent on it, the last
    one's results reported; the rows of config.study.seeds seeds share label and k."""

    label: str
    k: int
    stages: tuple
    share: float = 1.0
    seed: int = 0


@dataclasses.dataclass
class Plan:
    """Stages in run order, report entries, notes on reused runs."""

    stages: list = dataclasses.field(default_factory=list)
    entries: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    def train_groups(self, name: str, search: str, k: int, label: str, max_groups: int, workdir):
        """A stage training the groups.json selection `max_groups` of stage `search`; its row."""
        self.stages.append(
            Stage(
                name,
                {
                    "method": "groups",
                    "groups.max_groups": max_groups,
                    "groups.groups_file": os.path.join(workdir, search, "groups.json"),
                },
            )
        )
        self.entries.append(Entry(label, k, (search, name)))


def one_run(method: str):
    """Planner of a study method that is one run of the training method of the same name."""

    def add(plan: Plan, config, task_names, workdir):
        del config, task_names, workdir
        plan.stages.append(Stage(method, {"method": method}, method=method))
        plan.entries.append(Entry(method, 1, (method,)))

    return add


def search_then_train(study_method: str, method: str):
    """Planner: one grouping run (its groups.json has a selection for each k), then each k
    trained."""

    def add(plan: Plan, config, task_names, workdir):
        del task_names
        ks = tuple(config.study.max_groups)
        plan.stages.append(
            Stage(
                study_method,
                {"method": method, "selection.max_groups": ks},
                search=True,
                method=study_method,
            )
        )
        for k in ks:
            plan.train_groups(f"{study_method}_k{k}", study_method, k, study_method, k, workdir)

    return add


def add_single(plan: Plan, config, task_names, workdir):
    """Every task alone; read from the HOA run when its single-task networks are these networks."""
    del workdir
    if (
        "hoa" in config.study.methods
        and (config.study.epochs_search == config.study.epochs_train)
        and not ({"single", "hoa"} & set(config.study.overrides.keys()))
    ):
        plan.entries.append(
            Entry("single", len(task_names), ("hoa",), share=2 / (len(task_names) + 1))
        )
        plan.notes.append(
            "single: read from the 'hoa' run, whose single-task networks are these "
            "networks (same initialisation, data order and per-network early stopping);"
            " compute: their share 2 / (T + 1) of that run"
        )
        return
    plan.stages.append(
        Stage(
            "single",
            {"method": "groups", "groups.groups": tuple((t,) for t in task_names)},
            method="single",
            stackable=True,
        )
    )
    plan.entries.append(Entry("single", len(task_names), ("single",)))


def add_random(plan: Plan, config, task_names, workdir):
    del task_names, workdir
    for k in config.study.max_groups:
        plan.stages.append(
            Stage(
                f"random_k{k}",
                {"method": "random", "groups.num_random_groups": k},
                method="random",
                stackable=True,
            )
        )
        plan.entries.append(Entry("random", k, (f"random_k{k}",)))


def add_dmtg(plan: Plan, config, task_names, workdir):
    """For each k: a search with dmtg.num_groups = k ('dmtg one-shot'), then its groups
    retrained."""
    del task_names
    for k in config.study.max_groups:
        plan.stages.append(
            Stage(
                f"dmtg_k{k}", {"method": "dmtg", "dmtg.num_groups": k}, search=True, method="dmtg"
            )
        )
        plan.entries.append(Entry("dmtg one-shot", k, (f"dmtg_k{k}",)))
        plan.train_groups(f"dmtg_k{k}_groups", f"dmtg_k{k}", k, "dmtg", 0, workdir)


# Study method -> planner(plan, config, task_names, workdir) adding its stages and rows.
PLANNERS = {
    "mtl": one_run("mtl"),
    "single": add_single,
    "tag": search_then_train("tag", "tag"),
    "cs": search_then_train("cs", "cs"),
    "hoa": search_then_train("hoa", "pairs"),
    "random": add_random,
    "uw": one_run("uw"),
    "gradnorm": one_run("gradnorm"),
    "pcgrad": one_run("pcgrad"),
    "dmtg": add_dmtg,
}

STUDY_METHODS = tuple(PLANNERS)


def plan_one_seed(config, task_names, workdir) -> Plan:
    """The stages and report rows of config.study.methods, in that order, for config.seed."""
    result = Plan()
    for method in config.study.methods:
        PLANNERS[method](result, config, task_names, workdir)
        if method in config.study.overrides:
            result.notes.append(
                f"{method}: its own runs trained with config.study.overrides.{method} "
                f"= {config.study.overrides[method].to_dict()}"
            )
    return result


def build_plan(config, task_names, workdir) -> Plan:
    """The stages and report rows of every seed: with config.study.seeds = 1 the stages of
    `plan_one_seed` in workdir/<stage>; with S > 1 seed i's stages in workdir/seed_<i>/<stage>,
    run with config.seed + i (initialisation, data order and the methods' own randomness), except
    stackable stages: one run in workdir/<stage> trains all S seeds side by side
    (config.groups.seeds = S, the same numbers as S runs), each seed's row taking its share
    1 / S."""
    seeds = config.study.seeds
    if seeds == 1:
        return plan_one_seed(config, task_names, workdir)
    result = Plan()
    for i in range(seeds):
        prefix = f"seed_{i}/"
        one = plan_one_seed(config, task_names, os.path.join(workdir, prefix))
        stacked = {s.name for s in one.stages if s.stackable}
        for stage in one.stages:
            if stage.name not in stacked:
                result.stages.append(
                    dataclasses.replace(
                        stage,
                        name=prefix + stage.name,
                        settings={**stage.settings, "seed": config.seed + i},
                    )
                )
            elif not i:
                result.stages.append(
                    dataclasses.replace(stage, settings={**stage.settings, "groups.seeds": seeds})
                )
        for entry in one.entries:
            names = tuple(n if n in stacked else prefix + n for n in entry.stages)
            share = entry.share / seeds if set(entry.stages) <= stacked else entry.share
            result.entries.append(dataclasses.replace(entry, stages=names, seed=i, share=share))
        if not i:
            result.notes = one.notes + [
                f"every row: {seeds} seeds (config.seed + 0..{seeds - 1}: "
                "initialisation, data order and the methods' randomness), "
                "each seed's stages in seed_<i>/"
                + (
                    f"; {', '.join(sorted(stacked))}: the seeds trained side by "
                    "side in one run (config.groups.seeds), each seed's row "
                    "with its share of it"
                    if stacked
                    else ""
                )
            ]
    return result


def validate(config) -> None:
    """UserError unless config.study.methods and the keys of config.study.overrides are study
    methods (the study block's ranges: tag_jax.default_config.STUDY)."""
    unknown = [m for m in config.study.methods if m not in STUDY_METHODS]
    if unknown or not config.study.methods:
        raise UserError(
            f"config.study.methods {tuple(config.study.methods)} must be a non-empty "
            f"subset of {STUDY_METHODS}"
        )
    unknown = [m for m in config.study.overrides if m not in STUDY_METHODS]
    if unknown:
        raise UserError(
            f"config.study.overrides has {unknown}; its keys must be study methods {STUDY_METHODS}"
        )


def stage_config(config, stage: Stage):
    """The config with the stage's settings, epochs and (last) its method's overrides."""
    result = config.copy_and_resolve_references()
    result.update_from_flattened_dict(stage.settings)
    epochs = config.study.epochs_search if stage.search else config.study.epochs_train
    if epochs:
        result.num_epochs = epochs
    if stage.method in config.study.overrides:
        was_locked = result.is_locked
        result.lock()  # an override may change keys, not add them
        try:
            result.update(config.study.overrides[stage.method].to_dict())
        except (KeyError, TypeError) as e:
            reason = str(e).strip("'\"").splitlines()[0].split(". Other fields")[0]
            raise UserError(
                f"config.study.overrides.{stage.method} does not fit the config: {reason}; "
                "use existing keys with values of their type"
            ) from e
        if not was_locked:
            result.unlock()
    return result
