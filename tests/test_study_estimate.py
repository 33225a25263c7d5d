"""tag_jax.study.estimate: a study's stage costs from the data size, the model and the cache."""

import pytest

from tag_jax import autotune, autotune_cache, methods
from tag_jax.study import estimate as study_estimate
from tag_jax.study.estimate import StageEstimate, Workload

WORKLOAD = Workload(
    num_train=100, num_validation=20, num_test=30, num_tasks=4, image_shape=(8, 8, 3)
)


def with_settings(config, **settings):
    """A copy of `config` with dotted settings (affinity__every_n_steps: affinity.every_n_steps)."""
    result = config.copy_and_resolve_references()
    result.update_from_flattened_dict({k.replace("__", "."): v for k, v in settings.items()})
    return result


def test_training_steps_count_epochs_min_steps_max_steps_and_partial_batches(tiny_config):
    config = with_settings(tiny_config, batch_size=32, num_epochs=2)  # 100 examples: 4 batches
    assert study_estimate.training_steps(config, 100) == 8
    config.drop_remainder = True  # 3 batches
    assert study_estimate.training_steps(config, 100) == 6
    config.min_train_steps = 10  # ceil(10 / 3) = 4 epochs
    assert study_estimate.training_steps(config, 100) == 12
    config.max_steps = 5
    assert study_estimate.training_steps(config, 100) == 5


@pytest.mark.parametrize(
    "settings, passes",
    [
        ({"method": "mtl"}, 1),
        ({"method": "uw"}, 1),
        ({"method": "pcgrad"}, 1 + 4),
        ({"method": "cs", "affinity__every_n_steps": 2}, 1 + 4 / 2),
        ({"method": "tag", "affinity__every_n_steps": 5}, 1 + (4 + 4) / 5),  # lookaheads, pulls
        ({"method": "tag", "affinity__estimator": "first_order"}, 1 + 4 / 2),
        ({"method": "pairs"}, 4 + 6),  # 4 single tasks, 6 pairs
        ({"method": "dmtg", "dmtg__num_groups": 3}, 3),
        ({"method": "random", "groups__num_random_groups": 2, "groups__seeds": 3}, 6),
        ({"method": "groups", "groups__groups": (("a",), ("b", "c"))}, 2),
        ({"method": "groups", "groups__max_groups": 3, "groups__seeds": 2}, 6),
        ({"method": "groups", "groups__max_groups": 0, "study__max_groups": (2, 4)}, 4),
    ],
)
def test_passes_per_step_by_method(tiny_config, settings, passes):
    """tiny_config: affinity.every_n_steps = 2 unless set; 4 tasks."""
    config = with_settings(tiny_config, **settings)
    assert study_estimate.passes_per_step(config, 4) == pytest.approx(passes)


def test_rule_of_thumb_estimate_by_hand(tiny_config):
    """No cache: the rule of thumb, plus start-up, the autotune budget and evaluation."""
    config = with_settings(tiny_config, method="cs", num_epochs=3, batch_size=25)  # 4 steps/epoch
    estimate = study_estimate.estimate_stage("cs", config, WORKLOAD, {}, autotune_budget=60.0)
    per_pass = study_estimate.RULE_SECONDS_PER_UNIT * 25 * 8 * 8 * tiny_config.model.width
    train = 12 * (study_estimate.STEP_OVERHEAD_SECONDS + (1 + 4 / 2) * per_pass)
    evaluated = (3 + 1) * 20 + 30  # validation after each epoch and at the end, test at the end
    evaluation = evaluated / 25 * study_estimate.EVAL_SHARE * per_pass
    assert estimate == StageEstimate(
        "cs",
        "cs",
        12,
        pytest.approx(study_estimate.STARTUP_SECONDS + 60.0 + train + evaluation),
        study_estimate.RULE_BASIS,
        60.0,
    )


@pytest.fixture
def cached_tag_decision(tiny_config, monkeypatch, tmp_path):
    """The cache after autotune timed TAG on the workload's shapes (its step mix 5 ms under the
    chosen conv, a measured step every 2 steps); yields (decisions, the config timed)."""
    monkeypatch.setenv(autotune.MODE_ENV, "time")
    monkeypatch.setenv(autotune_cache.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(methods.models, "conv_candidates", lambda: ("xla", "im2col"))
    config = with_settings(tiny_config, method="tag", batch_size=25)
    ms = {"xla": 5.0, "im2col": 7.0, "unrolled": 5.0, "vmap": 6.0}

    def timer(config, tunable, candidate):
        return [ms[candidate] / 1e3] * 4

    autotune.resolve(
        config,
        None,
        WORKLOAD.num_tasks,
        WORKLOAD.image_shape,
        (autotune.CONV,) + methods.REGISTRY["tag"].tuned,
        timer=timer,
    )
    return autotune_cache.load_cache(), config


def test_a_cached_decision_gives_seconds_per_pass_for_its_method_and_others(cached_tag_decision):
    """TAG, 4 tasks, measured every 2 steps: 1 + (4 + 4) / 2 = 5 passes a step in 5 ms: 1 ms a
    pass. The TAG stage counts no autotune (cached); MTL on the same shapes uses TAG's 1 ms a
    pass, and counts its own autotune."""
    decisions, tag = cached_tag_decision
    here = autotune_cache.machine_fields()
    seconds, own = study_estimate.cached_pass_seconds(tag, 25, WORKLOAD, decisions, here)
    assert (seconds, own) == (pytest.approx(1e-3), True)
    estimate = study_estimate.estimate_stage("tag", tag, WORKLOAD, decisions, autotune_budget=9.0)
    assert (estimate.basis, estimate.autotune_seconds) == (study_estimate.CACHE_BASIS, 0.0)
    mtl = with_settings(tag, method="mtl")
    assert study_estimate.cached_pass_seconds(mtl, 25, WORKLOAD, decisions, {}) == (
        pytest.approx(1e-3),
        False,
    )
    assert study_estimate.estimate_stage(
        "mtl", mtl, WORKLOAD, decisions, autotune_budget=9.0
    ).autotune_seconds == pytest.approx(9.0)


def test_a_decision_of_other_shapes_or_another_machine_is_not_used(cached_tag_decision):
    decisions, tag = cached_tag_decision
    wider = with_settings(tag, model__width=8)
    assert study_estimate.cached_pass_seconds(wider, 25, WORKLOAD, decisions, {}) is None
    assert study_estimate.cached_pass_seconds(tag, 50, WORKLOAD, decisions, {}) is None
    elsewhere = {"host": "another cpu x2"}
    assert study_estimate.cached_pass_seconds(tag, 25, WORKLOAD, decisions, elsewhere) is None
    assert study_estimate.estimate_stage("t", wider, WORKLOAD, decisions).basis == (
        study_estimate.RULE_BASIS
    )


def test_a_methods_autotune_is_counted_at_its_first_stage_only(tiny_config):
    named = [
        ("tag", with_settings(tiny_config, method="tag")),
        ("tag_k2", with_settings(tiny_config, method="groups", groups__max_groups=2)),
        ("tag_k3", with_settings(tiny_config, method="groups", groups__max_groups=3)),
    ]
    estimates = study_estimate.estimate_stages(named, WORKLOAD, {}, autotune_budget=30.0)
    assert [e.autotune_seconds for e in estimates] == [30.0, 30.0, 0.0]
    alone = study_estimate.estimate_stage("tag_k3", named[2][1], WORKLOAD, {}, autotune_budget=30.0)
    assert estimates[2].seconds == pytest.approx(alone.seconds - 30.0)


def estimates_of(seconds: dict) -> list:
    return [
        StageEstimate(name, "mtl", 10, s, study_estimate.RULE_BASIS) for name, s in seconds.items()
    ]


def test_time_left_scales_the_stages_left_by_the_stages_run():
    estimates = estimates_of({"a": 10.0, "b": 20.0, "c": 30.0})
    assert study_estimate.time_left(estimates, {}) == 60.0
    assert study_estimate.time_left(estimates, {"a": 20.0}) == pytest.approx((20 + 30) * 2.0)
    assert study_estimate.time_left(estimates, {"a": 5.0, "b": 10.0}) == pytest.approx(30 * 0.5)
    assert study_estimate.time_left(estimates, {"a": 5.0, "b": 10.0, "c": 1.0}) == 0.0
    assert study_estimate.time_left(estimates, {"b": 10.0}, skipped={"a"}) == pytest.approx(15.0)


def test_plan_lines_give_the_total_and_every_stage_marked_rough():
    estimates = estimates_of({"mtl": 90.0, "tag": 30.0})
    estimates[1] = StageEstimate("tag", "tag", 1234, 30.0, study_estimate.CACHE_BASIS, 12.0)
    lines = study_estimate.plan_lines(estimates)
    assert lines[0].startswith("Study plan: 2 stages, about 2m 00s in all (rough estimates")
    assert lines[1] == "  stage 1/2 mtl (mtl): up to 10 steps, ~1m 30s (rule of thumb)"
    assert lines[2] == (
        "  stage 2/2 tag (tag): up to 1,234 steps, ~30s (autotune cache, autotune up to 12s)"
    )


def test_networks_vmapped_on_cpu_cost_more_per_network(tiny_config, cached_tag_decision):
    """HOA's 10 networks (4 tasks), vmapped on CPU: each pass VMAP_SLOWDOWN_PER_NETWORK x 10 times
    the rule's (or the cache's, from another method); unrolled, as it is plus
    UNROLLED_COMPILE_SECONDS_PER_NETWORK x 10 of compiling; on another backend (None), as it is;
    a method of one network never."""
    pairs = with_settings(tiny_config, method="pairs")

    def strategy(name):
        return lambda config, count: name if count == 10 else "unrolled"

    def train_seconds(config, decisions, cpu_network_strategy):
        estimate = study_estimate.estimate_stage(
            "s", config, WORKLOAD, decisions, cpu_network_strategy=cpu_network_strategy
        )
        return estimate.seconds - study_estimate.STARTUP_SECONDS

    slowed = study_estimate.VMAP_SLOWDOWN_PER_NETWORK * 10
    steps = study_estimate.training_steps(pairs, WORKLOAD.num_train)
    compiling = study_estimate.UNROLLED_COMPILE_SECONDS_PER_NETWORK * 10
    unrolled = train_seconds(pairs, {}, strategy("unrolled")) - compiling
    assert unrolled == pytest.approx(train_seconds(pairs, {}, None))
    overhead = steps * study_estimate.STEP_OVERHEAD_SECONDS
    assert train_seconds(pairs, {}, strategy("vmap")) - overhead == pytest.approx(
        (unrolled - overhead) * slowed
    )
    decisions, tag = cached_tag_decision  # 1 ms a pass, measured on TAG's one network
    cached_pairs = with_settings(tag, method="pairs")
    plain = train_seconds(cached_pairs, decisions, strategy("unrolled")) - overhead - compiling
    assert train_seconds(cached_pairs, decisions, strategy("vmap")) - overhead == pytest.approx(
        plain * slowed
    )
    mtl = with_settings(tiny_config, method="mtl")
    assert train_seconds(mtl, {}, lambda config, count: "vmap") == train_seconds(mtl, {}, None)
