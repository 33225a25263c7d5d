"""The grouping study: stage plan, a tiny study end to end (paused, resumed, skipped), the CLI."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from conftest import REPO, load_config

from tag_jax import manifest, train
from tag_jax.errors import UserError
from tag_jax.study import plan as study_plan
from tag_jax.study import report as study_report
from tag_jax.study import resume
from tag_jax.study.estimate import RULE_BASIS, StageEstimate
from tag_jax.study.progress import StudyProgress
from tag_jax.study.run import planted_groups, run_study, start_over

TASKS = ("g0_t0", "g0_t1", "g1_t0", "g1_t1")


def test_plan_stages_entries_and_notes(tmp_path):
    config = load_config("tiny_study")
    config.study.methods = ("mtl", "single", "tag", "hoa", "random", "uw", "dmtg")
    config.study.max_groups = (2, 3)
    plan = study_plan.build_plan(config, TASKS, str(tmp_path))
    stages, entries, notes = plan.stages, plan.entries, plan.notes
    assert [s.name for s in stages] == [
        "mtl",
        "tag",
        "tag_k2",
        "tag_k3",
        "hoa",
        "hoa_k2",
        "hoa_k3",
        "random_k2",
        "random_k3",
        "uw",
        "dmtg_k2",
        "dmtg_k2_groups",
        "dmtg_k3",
        "dmtg_k3_groups",
    ]
    assert len(notes) == 1 and notes[0].startswith("single: read from the 'hoa' run")
    assert study_plan.Entry("uw", 1, ("uw",)) in entries
    assert study_plan.Entry("single", 4, ("hoa",), share=2 / 5) in entries
    by_name = {s.name: s for s in stages}
    assert by_name["hoa"].settings == {"method": "pairs", "selection.max_groups": (2, 3)}
    assert by_name["hoa"].search and not by_name["hoa_k3"].search
    assert by_name["hoa_k3"].settings["groups.groups_file"] == str(tmp_path / "hoa" / "groups.json")
    assert [(e.label, e.k, e.stages) for e in entries if e.label == "tag"] == [
        ("tag", 2, ("tag", "tag_k2")),
        ("tag", 3, ("tag", "tag_k3")),
    ]
    assert [(e.label, e.k, e.stages) for e in entries if e.label.startswith("dmtg")] == [
        ("dmtg one-shot", 2, ("dmtg_k2",)),
        ("dmtg", 2, ("dmtg_k2", "dmtg_k2_groups")),
        ("dmtg one-shot", 3, ("dmtg_k3",)),
        ("dmtg", 3, ("dmtg_k3", "dmtg_k3_groups")),
    ]
    assert by_name["dmtg_k3"].settings == {"method": "dmtg", "dmtg.num_groups": 3}
    assert by_name["dmtg_k3_groups"].settings["groups.max_groups"] == 0
    config.study.epochs_search, config.study.epochs_train = 5, 7
    assert study_plan.stage_config(config, by_name["hoa"]).num_epochs == 5
    assert study_plan.stage_config(config, by_name["hoa_k3"]).groups.max_groups == 3
    assert study_plan.stage_config(config, by_name["hoa_k3"]).num_epochs == 7
    single = study_plan.build_plan(config, TASKS, str(tmp_path)).stages[
        1
    ]  # HOA trains fewer epochs: own stage
    assert single.name == "single"
    assert single.settings["groups.groups"] == tuple((t,) for t in TASKS)
    config.study.epochs_search = config.study.epochs_train
    config.study.overrides = {"hoa": {"seed": 1}}  # HOA's networks differ: own stage too
    assert study_plan.build_plan(config, TASKS, str(tmp_path)).stages[1].name == "single"


def test_bad_study_config_is_a_user_error(tmp_path):
    config = load_config("tiny_study")
    config.study.methods = ("mtl", "nope")
    with pytest.raises(UserError, match="config.study.methods"):
        run_study(config, str(tmp_path))


def test_overrides_change_the_method_runs_only():
    config = load_config("celeba_study")  # DMTG searches with its published Adam, no early stop
    plan = study_plan.build_plan(config, TASKS, "w")
    stages = {s.name: s for s in plan.stages}
    assert (
        "dmtg: its own runs trained with config.study.overrides.dmtg = {'early_stopping': "
        "{'patience': 0, 'restore_best': False}, 'optimizer': {'learning_rate': 0.0008, "
        "'name': 'adam'}}"
    ) in plan.notes  # the report says which recipe DMTG's rows used
    dmtg_search = study_plan.stage_config(config, stages["dmtg_k3"])
    assert (dmtg_search.optimizer.name, dmtg_search.optimizer.learning_rate) == ("adam", 8e-4)
    assert dmtg_search.early_stopping.patience == 0 and dmtg_search.dmtg.num_groups == 3
    for name in ("dmtg_k3_groups", "tag", "tag_k3", "mtl"):
        other = study_plan.stage_config(config, stages[name])
        assert (other.optimizer.name, other.optimizer.learning_rate) == ("sgd", 5e-4), name
        assert other.early_stopping.patience == 10


@pytest.mark.parametrize(
    "override, message",
    [
        ({"dmtg": {"optimizer": {"nmae": "adam"}}}, "overrides.dmtg does not fit the config: Key"),
        (
            {"dmtg": {"optimizer": {"learning_rate": "fast"}}},
            "overrides.dmtg does not fit the config",
        ),
        ({"dmgt": {"seed": 1}}, r"overrides has \['dmgt'\]"),
    ],
)
def test_bad_override_is_a_user_error_before_any_stage_runs(tmp_path, override, message):
    config = load_config("tiny_study")
    config.study.methods = ("mtl", "dmtg")
    config.study.overrides = override
    with pytest.raises(UserError, match=message):
        run_study(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "mtl")


def test_tiny_study_end_to_end_paused_resumed_and_skipped(tmp_path, monkeypatch, caplog):
    """Also: the plan and one line per stage start and end are logged, and after the first stage
    (hoa) report.md is there, partial, with the row it completes (single, read from hoa)."""
    config = load_config("tiny_study")
    config.study.methods = ("single", "hoa", "random")
    workdir = str(tmp_path / "study")
    config.max_steps = 2  # pauses inside the first stage, 'hoa' (3 steps)
    assert run_study(config, workdir) is None
    config.max_steps = -1
    reports_seen, train_and_evaluate = {}, train.train_and_evaluate

    def reading_the_report(stage_config, stage_workdir, **kwargs):
        report = os.path.join(workdir, "report.md")
        reports_seen[os.path.basename(stage_workdir)] = (
            open(report).read() if os.path.exists(report) else None
        )
        return train_and_evaluate(stage_config, stage_workdir, **kwargs)

    monkeypatch.setattr(train, "train_and_evaluate", reading_the_report)
    # the absl logger's own lines, whatever level or propagation earlier tests in this process
    # left it with (the logs once went missing on a shared test worker)
    caplog.set_level("INFO", logger="absl")
    monkeypatch.setattr(logging.getLogger("absl"), "propagate", True)
    report = run_study(config, workdir)
    assert reports_seen["hoa"] is None  # the first stage (resumed): no report yet
    partial = reports_seen["hoa_k2"]
    assert "**Partial report: 1 of 3 stages done.**" in partial
    assert "| single | 4 |" in partial and "| hoa |" not in partial
    assert "Partial report" not in open(os.path.join(workdir, "report.md")).read()
    assert not report["partial"] and report["stages_done"] == report["stages_total"] == 3
    logged = caplog.text
    assert "Study plan: 3 stages, about" in logged
    assert "stage 2/3 hoa_k2 (groups): up to" in logged
    for line in ("stage 1/3 hoa (pairs) started: ", "stage 1/3 hoa (pairs) done in "):
        assert line in logged
    assert "stage 3/3 random_k2 (random) done in " in logged and "left (rough)" in logged

    rows = {(r["label"], r["k"]): r for r in report["rows"]}
    assert sorted(rows) == [("hoa", 2), ("random", 2), ("single", 4)]
    results = {
        name: json.load(open(os.path.join(workdir, name, "results.json")))
        for name in ("hoa", "hoa_k2", "random_k2")
    }
    hoa = rows[("hoa", 2)]
    hoa_groups = json.load(open(os.path.join(workdir, "hoa_k2", "groups_trained.json")))["groups"]
    assert hoa["groups"] == hoa_groups
    assert hoa["recovers_planted"] == (sorted(hoa_groups) == [list(TASKS[:2]), list(TASKS[2:])])
    assert hoa["test_total_error"] == results["hoa_k2"]["test"]["total_error"]
    # 10 networks (4 singles + 6 pairs) per HOA step, then the k = 2 groups' networks
    assert hoa["trunk_passes"] == (
        results["hoa"]["steps"] * 10 + results["hoa_k2"]["steps"] * len(hoa_groups)
    )
    assert rows[("random", 2)]["trunk_passes"] == 2 * results["random_k2"]["steps"]
    single = rows[("single", 4)]  # the HOA run's single-task networks
    assert single["groups"] == [[t] for t in TASKS]
    assert single["test_total_error"] == results["hoa"]["test"]["total_error"]
    assert single["trunk_passes"] == 4 * results["hoa"]["steps"]
    pairs = json.load(open(os.path.join(workdir, "hoa", "pairs.json")))
    for split in ("validation", "test"):  # 'pairs' serves every task from its single-task network
        np.testing.assert_allclose(
            [pairs[f"{split}_loss"][t][t] for t in TASKS],
            results["hoa"][split]["task_loss"],
            rtol=1e-5,
        )
    assert hoa["seconds"] == pytest.approx(
        results["hoa"]["compute"]["train_seconds"] + results["hoa_k2"]["compute"]["train_seconds"]
    )
    assert report["stages"]["hoa"]["trunk_passes_per_step"] == [10, 10]
    for name in ("report.md", "report.json", "total_error_vs_compute.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    assert "| hoa | 2 |" in open(os.path.join(workdir, "report.md")).read()

    def no_training(*args):
        raise AssertionError(f"a finished stage was trained again: {args[1]}")

    monkeypatch.setattr(train, "train_and_evaluate", no_training)
    assert run_study(config, workdir) == json.load(open(os.path.join(workdir, "report.json")))


@pytest.mark.slow
def test_tiny_study_with_every_method(tmp_path):
    config = load_config("tiny_study")
    report = run_study(config, str(tmp_path))
    labels = {r["label"] for r in report["rows"]}
    assert labels == {
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
        "dmtg one-shot",
    }
    assert [n.split(":")[0] for n in report["notes"]] == ["single"]  # read from the HOA run
    for row in report["rows"]:
        (run,) = row["runs"]  # one seed
        stage = json.load(open(tmp_path / run["stages"][-1] / "results.json"))
        assert row["groups"] == run["groups"] == stage["groups"] and row["trunk_passes"] > 0


def test_cli_bad_study_method_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tag_jax.study",
            "--config",
            os.path.join(REPO, "configs/tiny_study.py"),
            f"--workdir={tmp_path}",
            "--config.study.methods=('mtl', 'nope')",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.study.methods")


def test_a_busy_study_folder_is_refused_and_restart_deletes_only_run_outputs(tmp_path):
    from tag_jax import workdir as workdirs  # pylint: disable=g-import-not-at-top

    config = load_config("tiny_study")
    config.study.methods = ("mtl", "tag")
    workdir = tmp_path / "study"
    lock = workdirs.acquire(str(workdir))
    try:
        with pytest.raises(
            UserError, match=rf"--workdir {workdir} is in use by process {os.getpid()}"
        ):
            run_study(config, str(workdir))
    finally:
        lock.release()
    outputs = ("results.json", "metrics.jsonl", "groups.png", "events.out.tfevents.1.x")
    for name in ("mtl", "tag", "tag_k2"):
        (workdir / name / "checkpoints" / "3").mkdir(parents=True)
        for output in outputs:
            (workdir / name / output).write_text("{}")
        manifest.claim(str(workdir / name), ("checkpoints",) + outputs)  # as the runs do
    (workdir / "mtl" / "mine.txt").write_text("x")
    for name in ("report.json", "report.md", "total_error_vs_compute.png", "notes.txt"):
        (workdir / name).write_text("x")
    resume.claim_outputs(str(workdir), study_plan.build_plan(config, TASKS, str(workdir)))
    start_over(str(workdir))
    assert sorted(os.listdir(workdir)) == [".lock", ".tag_jax_manifest.json", "mtl", "notes.txt"]
    assert sorted(os.listdir(workdir / "mtl")) == [".tag_jax_manifest.json", "mine.txt"]


# --- seeds: statistics, stability, "did not learn", a multi-seed study ---


def test_seed_statistics_against_numpy_and_scipy():
    values = [12.5, 10.0, 14.0, 11.5]
    stats = study_report.seed_statistics(values)
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    low, high = scipy.stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
    )
    assert stats["ci95"] == pytest.approx((high - low) / 2)
    assert study_report.seed_statistics([3.0]) == {
        "mean": 3.0,
        "std": None,
        "ci95": None,
        "values": [3.0],
    }


@pytest.mark.parametrize(
    "values, reference",
    [
        ([10.0, 11.0, 10.5], [20.0, 21.0, 19.5]),  # clearly lower
        ([10.0, 14.0, 12.0], [11.0, 13.0, 12.5]),  # within noise
        ([30.0, 31.0, 29.0, 30.5], [20.0, 26.0, 23.0]),  # higher, unequal seeds and spread
    ],
)
def test_comparison_with_mtl_agrees_with_welchs_test(values, reference):
    compared = study_report.compare_to_reference(values, reference)
    assert compared["difference"] == pytest.approx(np.mean(values) - np.mean(reference))
    p_value = scipy.stats.ttest_ind(values, reference, equal_var=False).pvalue
    differs = compared["verdict"] != "within seed noise"
    assert differs == (p_value < 0.05)
    if differs:
        assert compared["verdict"] == (
            "lower" if np.mean(values) < np.mean(reference) else "higher"
        )
    assert study_report.compare_to_reference([1.0], [2.0, 3.0])["verdict"] is None


def test_grouping_counts_compare_groups_as_sets():
    counts = study_report.grouping_counts(
        [[["a", "b"], ["c"]], [["c"], ["b", "a"]], [["a"], ["b", "c"]]]
    )
    assert counts == [
        {"groups": [["a", "b"], ["c"]], "seeds": 2},
        {"groups": [["a"], ["b", "c"]], "seeds": 1},
    ]


def test_plan_with_seeds_runs_every_stage_per_seed_in_its_own_folder(tmp_path):
    config = load_config("tiny_study")
    config.study.methods = ("mtl", "tag")
    config.study.seeds, config.seed = 2, 7
    plan = study_plan.build_plan(config, TASKS, str(tmp_path))
    assert [s.name for s in plan.stages] == [
        "seed_0/mtl",
        "seed_0/tag",
        "seed_0/tag_k2",
        "seed_1/mtl",
        "seed_1/tag",
        "seed_1/tag_k2",
    ]
    by_name = {s.name: s for s in plan.stages}
    assert (
        by_name["seed_1/tag"].settings["seed"] == 8 and by_name["seed_0/mtl"].settings["seed"] == 7
    )
    assert by_name["seed_1/tag_k2"].settings["groups.groups_file"] == str(
        tmp_path / "seed_1" / "tag" / "groups.json"
    )
    assert study_plan.stage_config(config, by_name["seed_1/tag_k2"]).seed == 8
    assert [(e.label, e.seed, e.stages) for e in plan.entries] == [
        ("mtl", 0, ("seed_0/mtl",)),
        ("tag", 0, ("seed_0/tag", "seed_0/tag_k2")),
        ("mtl", 1, ("seed_1/mtl",)),
        ("tag", 1, ("seed_1/tag", "seed_1/tag_k2")),
    ]
    config.study.seeds = 0
    with pytest.raises(UserError, match=r"config.study.seeds must be >= 1 \(an integer\), got 0"):
        run_study(config, str(tmp_path / "zero"))


def summary(total_error):
    accuracy = [1 - total_error / 100 / len(TASKS)] * len(TASKS)
    return {"task_accuracy": accuracy, "total_error": total_error}


def fake_results(workdir, stage, total_error, groups, learned=True, seed_results=None):
    os.makedirs(os.path.join(workdir, stage), exist_ok=True)
    record = {
        "method": "x",
        "tasks": list(TASKS),
        "groups": groups,
        "steps": 10,
        "learned": learned,
        "test": summary(total_error),
        "validation": summary(total_error),
        "majority_baseline": {"test": {"total_error": 100.0}},
        "compute": {
            "trunk_passes": 30,
            "trunk_passes_per_step": [3, 3],
            "measured_steps": 0,
            "train_seconds": 3.0,
        },
    }
    if seed_results:
        record["seed_results"] = [
            {"groups": g, "learned": ok, "test": summary(te), "validation": summary(te)}
            for te, g, ok in seed_results
        ]
    with open(os.path.join(workdir, stage, "results.json"), "w") as f:
        json.dump(record, f)


def test_report_over_seeds_marks_runs_that_did_not_learn(tmp_path):
    config = load_config("tiny_study")
    config.study.methods, config.study.seeds = ("mtl", "random"), 3
    workdir = str(tmp_path)
    plan = study_plan.build_plan(config, TASKS, workdir)
    assert [s.name for s in plan.stages] == ["seed_0/mtl", "random_k2", "seed_1/mtl", "seed_2/mtl"]
    assert plan.stages[1].settings["groups.seeds"] == 3  # the seeds side by side in one run
    split = [list(TASKS[:2]), list(TASKS[2:])]
    other = [[TASKS[0]], list(TASKS[1:])]
    for i, mtl in enumerate([20, 22, 21]):
        fake_results(workdir, f"seed_{i}/mtl", mtl, [list(TASKS)])
    fake_results(
        workdir,
        "random_k2",
        10,
        split,
        seed_results=[(10, split, True), (11, split, True), (12, other, False)],
    )
    report = study_report.build_report(config, TASKS, plan, workdir, planted_groups(config, TASKS))
    mtl, random = report["rows"]
    assert mtl["test_total_error_stats"]["values"] == [20, 22, 21] and mtl["seeds"] == 3
    assert random["test_total_error_stats"]["values"] == [10, 11, 12]
    assert random["trunk_passes"] == 10 and random["seconds"] == pytest.approx(1.0)  # a third each
    assert random["groupings"] == [{"groups": split, "seeds": 2}, {"groups": other, "seeds": 1}]
    assert random["learned_seeds"] == 2 and random["vs_mtl"] is None  # not presented as a finding
    assert random["recovers_planted"] == pytest.approx(2 / 3)
    table = "\n".join(study_report.main_table(report["rows"]))
    assert "| random | 2 | did not learn (1/3 seeds) |" in table
    assert (
        "| mtl | 1 | {g0_t0, g0_t1, g1_t0, g1_t1} (3/3) | – | 21.00 ± 1.00 (95% CI ± 2.48) |"
        in table
    )
    fake_results(
        workdir,
        "random_k2",
        10,
        split,  # now every seed learned
        seed_results=[(10, split, True), (11, split, True), (12, other, True)],
    )
    random = study_report.build_report(config, TASKS, plan, workdir, planted_groups(config, TASKS))[
        "rows"
    ][1]
    assert random["vs_mtl"]["verdict"] == "lower"
    assert "| -10.00 ± " in "\n".join(study_report.main_table([random]))


def test_multi_seed_study_paused_resumed_equals_uninterrupted(tmp_path):
    config = load_config("tiny_study")
    config.study.methods, config.study.seeds = ("mtl", "random"), 2
    paused = str(tmp_path / "paused")
    config.max_steps = 2  # inside seed_0/mtl (3 steps)
    assert run_study(config, paused) is None
    config.max_steps = -1
    resumed = run_study(config, paused)
    straight = run_study(config, str(tmp_path / "straight"))
    for a, b in zip(resumed["rows"], straight["rows"]):
        assert a["test_total_error_stats"]["values"] == b["test_total_error_stats"]["values"]
    mtl = resumed["rows"][0]
    per_seed = [
        json.load(open(os.path.join(paused, f"seed_{i}", "mtl", "results.json"))) for i in range(2)
    ]
    assert mtl["test_total_error_stats"]["values"] == [r["test"]["total_error"] for r in per_seed]
    assert per_seed[0]["test"] != per_seed[1]["test"]  # the seeds are different runs
    random = json.load(open(os.path.join(paused, "random_k2", "results.json")))  # side by side
    assert resumed["rows"][1]["test_total_error_stats"]["values"] == [
        r["test"]["total_error"] for r in random["seed_results"]
    ]
    assert "Groupings across seeds" in open(os.path.join(paused, "report.md")).read()


def fake_groups(workdir, stage, confidences):
    """groups.json of a grouping run: a selection per k with its confidence and verdict."""
    selections = [
        {"max_groups": k, "groups": [list(TASKS)], "confidence": c, "verdict": v}
        for k, (c, v) in confidences.items()
    ]
    with open(os.path.join(workdir, stage, "groups.json"), "w") as f:
        json.dump({"tasks": list(TASKS), "selections": selections}, f)


def test_grouping_rows_show_single_run_confidence_next_to_seed_stability(tmp_path):
    """Hand-made runs of 3 seeds: TAG's runs say 'clear' at k = 2 but the seeds choose two
    groupings (a disagreement); at k = 3 no run is clear but every seed chooses one grouping (the
    other disagreement); random rows have no confidence ('–')."""
    config = load_config("tiny_study")
    config.study.methods, config.study.seeds = ("tag", "random"), 3
    config.study.max_groups = (2, 3)
    workdir = str(tmp_path)
    plan = study_plan.build_plan(config, TASKS, workdir)
    split, other = [list(TASKS[:2]), list(TASKS[2:])], [[TASKS[0]], list(TASKS[1:])]
    three = [[TASKS[0]], [TASKS[1]], list(TASKS[2:])]
    verdicts = [("clear", "uncertain"), ("clear", "no preferred grouping"), ("uncertain", "clear")]
    for i, (at_2, at_3) in enumerate(verdicts):
        fake_results(workdir, f"seed_{i}/tag", 20, [list(TASKS)])
        fake_groups(workdir, f"seed_{i}/tag", {2: (0.9 - i / 10, at_2), 3: (0.3, at_3)})
        fake_results(workdir, f"seed_{i}/tag_k2", 15, split if i < 2 else other)
        fake_results(workdir, f"seed_{i}/tag_k3", 16, three)
    for k in (2, 3):
        fake_results(workdir, f"random_k{k}", 18, split, seed_results=[(18, split, True)] * 3)
    report = study_report.build_report(config, TASKS, plan, workdir)
    rows = {(r["label"], r["k"]): r for r in report["rows"]}
    tag2, tag3 = rows[("tag", 2)], rows[("tag", 3)]
    assert tag2["confidence"]["values"] == pytest.approx([0.9, 0.8, 0.7])
    assert tag2["confidence"]["mean"] == pytest.approx(0.8) and tag2["confidence"]["clear"] == 2
    assert tag2["runs"][2]["confidence"] == {"confidence": 0.7, "verdict": "uncertain"}
    assert "seeds chose 2 different groupings (the most frequent in 2/3)" in tag2["disagreement"]
    assert tag3["confidence"]["clear"] == 1 and tag3["groupings"][0]["seeds"] == 3
    assert "every seed chose the same grouping" in tag3["disagreement"]
    assert rows[("random", 2)]["confidence"] is None and rows[("random", 2)]["disagreement"] is None
    table = study_report.main_table(report["rows"])
    assert any(
        line.startswith("| tag | 2 | {g0_t0, g0_t1} {g1_t0, g1_t1} (2/3) | 0.80 (clear 2/3) |")
        for line in table
    )
    assert any(
        line.startswith("| random | 2 | {g0_t0, g0_t1} {g1_t0, g1_t1} (3/3) | – |")
        for line in table
    )
    text = study_report.markdown(report)
    assert "## Single-run confidence and seed stability" in text
    assert "Where they disagree (2 of 2 grouping rows):" in text
    assert "- tag, k = 2: single runs were confident (clear in 2/3 seeds)" in text


def test_single_run_confidence_of_one_seed_and_rows_without_it(tmp_path):
    """One seed: the cell shows the run's confidence and verdict, no disagreement is claimed;
    a groups.json without confidence fields (an older run) shows '–', and so does 'single',
    read from the HOA run (its groups.json is HOA's selection, not single's)."""
    config = load_config("tiny_study")
    config.study.methods = ("tag", "cs", "single", "hoa")
    workdir = str(tmp_path)
    plan = study_plan.build_plan(config, TASKS, workdir)
    for stage in ("tag", "tag_k2", "cs", "cs_k2", "hoa", "hoa_k2"):
        fake_results(workdir, stage, 15, [list(TASKS)])
    fake_groups(workdir, "tag", {2: (0.95, "clear")})
    fake_groups(workdir, "hoa", {2: (0.5, "uncertain")})
    with open(os.path.join(workdir, "cs", "groups.json"), "w") as f:
        json.dump({"selections": [{"max_groups": 2, "groups": [list(TASKS)]}]}, f)
    report = study_report.build_report(config, TASKS, plan, workdir)
    rows = {r["label"]: r for r in report["rows"]}
    tag, cs = rows["tag"], rows["cs"]
    assert study_report.single_run.format_confidence(tag) == "0.95 clear"
    assert study_report.single_run.format_confidence(rows["hoa"]) == "0.50 uncertain"
    assert tag["disagreement"] is None
    assert cs["confidence"] is None and study_report.single_run.format_confidence(cs) == "–"
    assert rows["single"]["confidence"] is None
    assert "One seed: seed stability is not measured" in study_report.markdown(report)


def test_a_partial_report_holds_the_rows_whose_stages_are_done(tmp_path):
    config = load_config("tiny_study")
    config.study.methods = ("tag", "mtl")  # stages tag, tag_k2, mtl
    workdir = str(tmp_path)
    plan = study_plan.build_plan(config, TASKS, workdir)
    os.makedirs(os.path.join(workdir, "tag"))  # running: no results.json yet
    assert study_report.build_report(config, TASKS, plan, workdir)["rows"] == []
    text = study_report.markdown(study_report.build_report(config, TASKS, plan, workdir))
    assert "**Partial report: 0 of 3 stages done.**" in text and "No row has all" in text
    fake_results(workdir, "tag", 20, [list(TASKS)])
    fake_results(workdir, "mtl", 21, [list(TASKS)])
    report = study_report.build_report(config, TASKS, plan, workdir)
    assert (report["partial"], report["stages_done"], report["stages_total"]) == (True, 2, 3)
    assert [r["label"] for r in report["rows"]] == ["mtl"]  # tag's row needs tag_k2 too
    assert sorted(report["stages"]) == ["mtl", "tag"]
    assert "**Partial report: 2 of 3 stages done.**" in study_report.markdown(report)
    fake_results(workdir, "tag_k2", 15, [list(TASKS)])
    report = study_report.build_report(config, TASKS, plan, workdir)
    assert not report["partial"] and [r["label"] for r in report["rows"]] == ["tag", "mtl"]
    assert "Partial report" not in study_report.markdown(report)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_count_stages_elapsed_and_time_left():
    """Estimates 60, 120, 60 s; the first stage is skipped (done before), the second takes 240 s,
    twice its estimate: the last one's 60 s become 120 s."""
    estimates = [
        StageEstimate(name, "mtl", 10, seconds, RULE_BASIS)
        for name, seconds in (("a", 60.0), ("b", 120.0), ("c", 60.0))
    ]
    clock = Clock()
    progress = StudyProgress(estimates, clock)
    assert progress.skipped(0) == "stage 1/3 a (mtl): done before, skipped"
    clock.now += 5
    assert progress.started(1) == "stage 2/3 b (mtl) started: 5s elapsed, about 3m 00s left (rough)"
    clock.now += 240
    assert progress.finished(1) == (
        "stage 2/3 b (mtl) done in 4m 00s: 4m 05s elapsed, about 2m 00s left (rough)"
    )
    progress.started(2)
    clock.now += 100
    assert progress.finished(2).endswith("done in 1m 40s: 5m 45s elapsed, about 0s left (rough)")


def test_report_imports_without_jax():
    """The report and its statistics need neither JAX nor the training code."""
    code = (
        "import sys; import tag_jax.study.report, tag_jax.study.plan, tag_jax.study.progress; "
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
