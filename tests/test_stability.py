"""Stop measuring once the grouping is settled (config.affinity.stop_when_stable)."""

import json
import os
import re

import numpy as np
import pytest
from conftest import load_config

from selection import confidence
from tag_jax import grouping, methods, stability, train
from tag_jax.errors import UserError
from tag_jax.loop_state import LoopState

A = [["a", "b"], ["c", "d"]]
B = [["a", "c"], ["b", "d"]]


def check(epoch, *shares, groups=(A,)):
    """A check record: one selection per groups (k = 2, 3, ...), with the confidences `shares`
    (none when not given)."""
    return {
        "epoch": epoch,
        "selection_seconds": 1.0,
        "seconds": 1.0,
        "selections": [
            {"max_groups": k, "groups": g, **({"confidence": shares[i]} if shares else {})}
            for i, (k, g) in enumerate(zip(range(2, 2 + len(groups)), groups))
        ],
    }


def test_settled_window_counts_back_while_the_groupings_hold():
    assert stability.settled_window([]) == []
    assert len(stability.settled_window([check(1)])) == 1
    checks = [check(1, groups=(B,)), check(2), check(3), check(4)]
    checks[3]["selections"][0]["groups"] = [["d", "c"], ["b", "a"]]  # the same, in another order
    assert [c["epoch"] for c in stability.settled_window(checks)] == [2, 3, 4]
    # another grouping at one k ends the window
    checks = [check(e, groups=(A, A if e != 2 else B)) for e in (1, 2, 3, 4)]
    assert [c["epoch"] for c in stability.settled_window(checks)] == [3, 4]
    # so does a missing epoch end
    assert len(stability.settled_window([check(1), check(3), check(4)])) == 2


def test_confidences_agree_needs_two_the_latest_one_verdict_and_the_tolerance():
    assert stability.confidences_agree([check(1, 0.95), check(2, 0.97)], 0.05)
    assert not stability.confidences_agree([check(1), check(2, 0.97)], 0.05)  # only one
    assert not stability.confidences_agree([check(1, 0.95), check(2)], 0.05)  # not the latest
    assert stability.confidences_agree([check(1, 0.95), check(2), check(3, 0.97)], 0.05)
    # spread from the lowest to the highest, not only between neighbours
    assert not stability.confidences_agree(
        [check(e, s) for e, s in enumerate([0.3, 0.34, 0.38])], 0.05
    )
    assert stability.confidences_agree([check(e, s) for e, s in enumerate([0.3, 0.34, 0.38])], 0.08)
    # 0.88 (uncertain) then 0.91 (clear): within 0.05, but another verdict
    assert not stability.confidences_agree([check(1, 0.88), check(2, 0.91)], 0.05)
    # every k counts
    assert not stability.confidences_agree(
        [check(1, 0.9, 0.5, groups=(A, B)), check(2, 0.9, 0.7, groups=(A, B))], 0.1
    )


def test_stop_reason_waits_for_the_epoch_ends_and_the_confidences():
    def record(*checks):
        return {"stability": {"checks": list(checks)}}

    settled = record(check(1), check(2, 0.95), check(3, 0.96))
    assert stability.stop_reason(settled, epochs=3, tolerance=0.05) is None  # 3 checks, not 4
    assert stability.stop_reason(settled, epochs=0, tolerance=0.05) is None
    reason = stability.stop_reason(settled, epochs=2, tolerance=0.05)
    assert "settled" in reason and "stop_when_stable=2" in reason
    assert (
        stability.stop_reason(
            record(check(1, 0.5), check(2), check(3, 0.96)), epochs=2, tolerance=0.05
        )
        is None
    )
    # confidences outside the last N + 1 checks do not count
    late = record(check(1, 0.95), check(2), check(3), check(4, 0.95))
    assert stability.stop_reason(late, epochs=2, tolerance=0.05) is None
    assert stability.stop_reason({}, epochs=1, tolerance=0.05) is None


def test_confidence_is_computed_once_settled_and_within_the_share():
    checks = [check(1), check(2), check(3)]  # 1 s each, 3 s so far
    # before any confidence, priced as 10 resamples x the 1 s selection: 13 s
    assert stability.wants_confidence(checks, 3, 52.0, share=0.25, num_resamples=10)
    assert not stability.wants_confidence(checks, 3, 51.0, share=0.25, num_resamples=10)
    assert not stability.wants_confidence(checks, 4, 1e6, share=0.25, num_resamples=10)
    # then as the latest check that computed confidences: 3 s so far + 1 s
    checks[1] = check(2, 0.5)
    assert stability.wants_confidence(checks, 2, 16.0, share=0.25, num_resamples=10)
    assert not stability.wants_confidence(checks, 2, 15.0, share=0.25, num_resamples=10)


def test_an_epoch_end_is_checked_while_the_checks_fit_the_share():
    assert stability.wants_check([], train_seconds=0.0, share=0.1)  # the first always
    checks = [check(1), check(2)]  # 2 s so far, the next priced 1 s
    assert stability.wants_check(checks, train_seconds=30.0, share=0.1)
    assert not stability.wants_check(checks, train_seconds=29.0, share=0.1)


def planted_blocks(seed, num_blocks=24):
    """Blocks of a 6-task affinity (source x target) with two planted groups of 3, noisy."""
    rng = np.random.default_rng(seed)
    group = np.arange(6) // 3
    table = (group[:, None] == group).astype(float)
    sums = np.stack([table + 0.8 * rng.normal(size=(6, 6)) for _ in range(num_blocks)])
    return {"sums": sums, "counts": np.ones(num_blocks, int)}


def test_a_check_selects_and_resamples_as_the_runs_end_does():
    tasks = [f"t{i}" for i in range(6)]
    blocks = planted_blocks(0)
    cfg = grouping.confidence_config()
    cfg.num_resamples = 30
    mean = blocks["sums"].mean(axis=0)
    plain = stability.grouping_check(5, tasks, mean.T, max_groups=(2, 3), time_limit=60.0)
    expected = grouping.select_for_each_k(tasks, mean.T, (2, 3))
    assert plain["epoch"] == 5 and [s["groups"] for s in plain["selections"]] == [
        s["groups"] for s in expected
    ]
    assert "confidence" not in plain["selections"][0]
    full = stability.with_confidence(plain, tasks, blocks, cfg, time_limit=60.0)
    assert full["solved"] == 60 and full["scored"] == 0 and full["seconds"] >= plain["seconds"]
    expected, _ = grouping.resampled_confidence(tasks, expected, blocks, cfg, time_limit=60.0)
    assert [(s["groups"], s["confidence"]) for s in full["selections"]] == [
        (s["groups"], s["confidence"]) for s in expected
    ]


def stopping_config():
    """tiny_test TAG for up to 12 epochs, every step measured, every resample solved."""
    config = load_config("tiny_test")
    config.mesh.data = 1
    config.method = "tag"
    config.num_epochs = 12
    config.early_stopping.patience = 0
    config.affinity.every_n_steps = 1
    config.affinity.confidence.num_resamples = 20
    config.affinity.stop_when_stable = 2
    config.affinity.stable_check_share = 1e6  # every check after settling computes confidences
    return config


def first_settled_epoch(checks, epochs, tolerance):
    """A naive reading of the rule: the first epoch whose check and the `epochs` before it hold
    the same groupings at every k, two or more of them (the latest among them) with confidences
    of one verdict at every k, spread by at most `tolerance`."""
    for end in range(epochs, len(checks)):
        window = checks[end - epochs : end + 1]
        keys = {
            tuple(confidence.grouping_key(s["groups"]) for s in c["selections"]) for c in window
        }
        rated = [c for c in window if "confidence" in c["selections"][0]]
        if len(keys) > 1 or len(rated) < 2 or rated[-1] is not window[-1]:
            continue
        shares = np.array([[s["confidence"] for s in c["selections"]] for c in rated])
        verdicts = {tuple(map(confidence.verdict, row)) for row in shares}
        if len(verdicts) == 1 and (shares.max(0) - shares.min(0)).max() <= tolerance + 1e-9:
            return window[-1]["epoch"]
    return None


def test_run_stops_where_the_grouping_settles_and_not_before(tmp_path):
    config = stopping_config()
    results = train.train_and_evaluate(config, str(tmp_path / "stopped"))
    record = json.load(open(tmp_path / "stopped" / "groups.json"))
    checks = record["stability"]["checks"]
    assert [c["epoch"] for c in checks] == list(range(1, results["epochs"] + 1))
    settled = first_settled_epoch(checks, 2, config.affinity.stable_tolerance)
    assert settled is not None and results["epochs"] == settled < config.num_epochs
    assert "settled" in results["stop_reason"] and not results["stopped_early"]
    # confidences were computed from the second epoch end of a grouping on (share unlimited)
    keys = [[confidence.grouping_key(s["groups"]) for s in c["selections"]] for c in checks]
    rated = ["confidence" in c["selections"][0] for c in checks]
    assert rated == [e > 0 and keys[e] == keys[e - 1] for e in range(len(checks))]
    # the reported groups and confidences are those of the last check; every output is written
    assert [(s["groups"], s["confidence"]) for s in record["selections"]] == [
        (s["groups"], s["confidence"]) for s in checks[-1]["selections"]
    ]
    for name in ("affinity.json", "affinity_blocks.npz", "grouping_confidence.png", "groups.png"):
        assert os.path.exists(tmp_path / "stopped" / name)

    # paused in the middle of the stopping epoch, then resumed: the same checks, the same stop
    config.max_steps = 3 * settled - 1
    paused = str(tmp_path / "paused")
    assert train.train_and_evaluate(config, paused) == {"stopped_at_step": config.max_steps}
    config.max_steps = -1
    resumed = train.train_and_evaluate(config, paused)
    assert (resumed["epochs"], resumed["stop_reason"]) == (settled, results["stop_reason"])
    again = json.load(open(os.path.join(paused, "groups.json")))["stability"]["checks"]
    assert [c["selections"] for c in again] == [c["selections"] for c in checks]

    # asked for more epoch ends than the run has, it checks every epoch end and never stops
    config.num_epochs = config.affinity.stop_when_stable = settled + 1
    full = train.train_and_evaluate(config, str(tmp_path / "full"))
    assert full["epochs"] == config.num_epochs and full["stop_reason"].startswith("the last epoch")
    checks_full = json.load(open(tmp_path / "full" / "groups.json"))["stability"]["checks"]
    assert [[s["groups"] for s in c["selections"]] for c in checks_full[:settled]] == [
        [s["groups"] for s in c["selections"]] for c in checks
    ]


def test_a_run_that_trained_every_epoch_says_so(finished_run):
    results = json.load(open(finished_run / "results.json"))
    assert results["stop_reason"] == "the last epoch ran (config.num_epochs=1)"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stop_when_stable", -1, "stop_when_stable must be >= 0"),
        ("stable_tolerance", 1.5, "stable_tolerance must be in [0, 1]"),
        ("stable_check_share", 0.0, "stable_check_share must be > 0"),
    ],
)
def test_stop_settings_are_checked(key, value, message):
    config = load_config("synthetic_tag")
    config.affinity[key] = value
    with pytest.raises(UserError, match=re.escape(f"config.affinity.{message}")):
        methods.validate(config)


@pytest.mark.parametrize("method", ["tag", "cs"])
def test_stopping_needs_the_confidence_it_watches(tiny_config, method):
    tiny_config.method = method
    tiny_config.affinity.stop_when_stable = 2
    tiny_config.affinity.confidence.num_resamples = 0
    with pytest.raises(UserError, match="needs the confidence it watches"):
        methods.validate(tiny_config)


def test_a_checkpoint_with_a_malformed_stop_reason_is_refused():
    record = LoopState.fresh({"best_loss": [], "best_epoch": [], "epochs_without_improvement": []})
    assert LoopState.from_json(record.to_json()).stop_reason is None
    with pytest.raises(TypeError, match="stop_reason"):
        LoopState.from_json({**record.to_json(), "stop_reason": 3})
