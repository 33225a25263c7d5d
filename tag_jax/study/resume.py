"""What a study re-run may reuse, checked before its first stage trains; what the study folder
holds (tag_jax.manifest).

A stage is reused only if it was made with the settings this study would give it: a stage folder
holding a run whose identity (tag_jax.workdir.IDENTITY_KEYS: seed, dataset, method, ...) differs
is refused, as a single run is; a finished stage (its results.json) whose other settings differ
(a learning rate, epochs, a study override) is refused too, naming the stage and the key, since
its results would be reported for settings they were not made with. An unfinished stage with
such a change resumes under the single run's rules (the change recorded). The report's files,
the stage folders and the seed folders are claimed in the manifests of the folders that hold
them, so --restart deletes exactly what the study wrote.
"""

import json
import os

from tag_jax import manifest
from tag_jax import workdir as workdirs
from tag_jax.data import pipeline
from tag_jax.errors import UserError
from tag_jax.study.plan import Plan, stage_config

# results.json keys the report reads, and the splits' key it reads.
RESULTS_KEYS = ("method", "tasks", "groups", "validation", "test", "learned", "compute")
# Stage settings that may differ on a re-run: where the groups file lies (its groups come from
# the search stage, itself checked).
MOVABLE_KEYS = ("groups.groups_file",)


def stage_results(path: str) -> dict:
    """A finished stage's results.json; UserError when it is not one (damaged)."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise _damaged(path, " ".join(str(e).split())) from e
    if not isinstance(results, dict):
        raise _damaged(path, f"a JSON {type(results).__name__}, not an object")
    missing = [k for k in RESULTS_KEYS if k not in results]
    if missing:
        raise _damaged(path, f"no {', '.join(missing)}")
    for split in ("validation", "test"):
        if not (isinstance(results[split], dict) and "total_error" in results[split]):
            raise _damaged(path, f"its '{split}' has no total_error")
    return results


def _damaged(path: str, why: str) -> UserError:
    return UserError(
        f"{path} is damaged ({why}); delete its stage folder {os.path.dirname(path)} to train "
        "that stage again, or re-run with --restart"
    )


def check_stages(config, study_plan: Plan, workdir: str, num_train: int) -> None:
    """UserError, before any stage trains, for a stage folder holding another run, or a finished
    stage made with other settings (the module docstring); num_train: training examples."""
    from tag_jax import run_checks  # pylint: disable=g-import-not-at-top (JAX, the methods: slow)

    for stage in study_plan.stages:
        folder = os.path.join(workdir, stage.name)
        saved = workdirs.saved_config(folder)
        if saved is None:
            continue
        stage_cfg = stage_config(config, stage)
        steps = pipeline.num_batches(num_train, stage_cfg.batch_size, stage_cfg.drop_remainder)
        stage_cfg = run_checks.with_training_length(stage_cfg, max(steps, 1))
        differ = workdirs.identity_changes(saved, stage_cfg)
        finished = os.path.exists(os.path.join(folder, "results.json"))
        if finished:
            stage_results(os.path.join(folder, "results.json"))
            changed = workdirs.setting_changes(saved, stage_cfg)
            differ += [k for k in changed if k not in MOVABLE_KEYS]
        if differ:
            key, old, new = changed_values(saved, stage_cfg, differ)[0]
            more = f" (and {len(differ) - 1} more changed key(s))" if len(differ) > 1 else ""
            raise UserError(
                f"study stage {stage.name} ({folder}) {'finished' if finished else 'ran'} with "
                f"{key}={old!r}, this study asks {new!r}{more}: its results would be reported "
                "for settings they were not made with; use a new --workdir, or re-run with "
                "--restart to run every stage again"
            )


def changed_values(saved: dict, config, keys) -> list:
    """[(dotted key, saved value, config's value)] of the leaves under `keys` that differ (a
    block key such as 'dataset' gives its changed leaves, e.g. 'dataset.noise')."""
    before, after = workdirs.flat(saved), workdirs.flat(workdirs.as_json(config))
    return [
        (leaf, before.get(leaf), after.get(leaf))
        for key in keys
        for leaf in sorted(set(before) | set(after))
        if (leaf == key or leaf.startswith(key + ".")) and before.get(leaf) != after.get(leaf)
    ]


def claim_outputs(workdir: str, study_plan: Plan) -> None:
    """Claims the report's files and every stage's folder (and the seed folders holding them) in
    the manifests of the folders that hold them, before any of them is written."""
    claims = {workdir: set(manifest.STUDY_OUTPUTS)}
    for stage in study_plan.stages:
        parent = workdir
        for part in stage.name.split("/"):
            claims.setdefault(parent, set()).add(part)
            parent = os.path.join(parent, part)
    for folder, names in claims.items():
        manifest.claim(folder, sorted(names))


def check_outputs_are_ours(workdir: str, *, restart: bool) -> None:
    """UserError when the study would overwrite (or, with restart, delete in) files of the study
    folder that no run of this project wrote."""
    if restart:
        manifest.check_can_restart(workdir)
    else:
        manifest.check_not_foreign(workdir, manifest.STUDY_OUTPUTS)
