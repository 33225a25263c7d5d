"""tag_jax.autotune: 'auto' decided by timing, explicit values untouched, decisions cached."""

import json
import os

import pytest

from tag_jax import autotune, autotune_cache, methods, models, step_timing

TASKS = ("a", "b")
SHAPE = (8, 8, 3)


@pytest.fixture(autouse=True)
def two_conv_candidates(monkeypatch):
    """The convolution candidates of every host ('xla_threaded' is only timed where the CPU
    compiler takes its options: tests/test_models.py)."""
    monkeypatch.setattr(models, "conv_candidates", lambda: ("xla", "im2col"))


@pytest.fixture
def timing(monkeypatch, tmp_path):
    """Timing on (whatever conftest says), the cache in tmp_path; yields the cache file."""
    monkeypatch.setenv(autotune.MODE_ENV, "time")
    monkeypatch.setenv(autotune_cache.CACHE_DIR_ENV, str(tmp_path))
    return tmp_path / autotune_cache.CACHE_FILE


class FakeTimer:
    """timer(config, tunable, candidate) -> step seconds from a table (ms 1..9); counts its
    calls."""

    def __init__(self, ms):
        self.ms, self.calls = ms, []

    def __call__(self, config, tunable, candidate):
        self.calls.append((tunable.path, candidate))
        assert autotune.get(config, tunable.path) == candidate
        ms = self.ms[candidate]  # 1..9; the first step, in reverse order, does not count
        return [(10.0 - ms) / 1e3] + [ms / 1e3] * 3


def resolve(config, timer):
    registered = methods.REGISTRY[config.method]
    return autotune.resolve(
        config, None, len(TASKS), SHAPE, (autotune.CONV,) + registered.tuned, timer=timer
    )


def test_chooses_the_fastest_candidate_of_each_setting(tiny_config, timing):
    tiny_config.method = "tag"
    timer = FakeTimer({"xla": 5.0, "im2col": 3.0, "unrolled": 9.0, "vmap": 2.0, "map": 4.0})
    config, record = resolve(tiny_config, timer)
    assert (config.model.conv, config.affinity.strategy) == ("im2col", "vmap")
    assert record["model.conv"]["source"] == "timed"
    assert record["model.conv"]["times_ms"] == pytest.approx({"xla": 5.0, "im2col": 3.0})
    assert record["affinity.strategy"]["times_ms"]["vmap"] == pytest.approx(2.0)
    assert tiny_config.model.conv == "auto"  # the caller's config is not changed
    json.dumps(record)  # goes into results.json as it is


def test_second_resolve_reads_the_cache_and_times_nothing(tiny_config, timing):
    tiny_config.method = "dmtg"
    first = FakeTimer({"xla": 1.0, "im2col": 2.0, "unrolled": 3.0, "vmap": 1.0})
    _, record = resolve(tiny_config, first)
    # The strategy for each conv candidate (the conv is decided on the run's mix), then the conv.
    assert len(first.calls) == 6 and timing.exists()
    second = FakeTimer({"xla": 9.0, "im2col": 1.0, "unrolled": 1.0, "vmap": 9.0})
    config, cached = resolve(tiny_config, second)
    assert second.calls == []
    assert (config.model.conv, config.dmtg.branch_strategy) == ("xla", "vmap")
    assert {k: v["source"] for k, v in cached.items()} == {
        "model.conv": "cache",
        "dmtg.branch_strategy": "cache",
    }
    assert cached["model.conv"]["times_ms"] == record["model.conv"]["times_ms"]
    # Another shape is another key: timed again.
    tiny_config.batch_size = 16
    resolve(tiny_config, second)
    assert len(second.calls) == 6


def test_conv_and_strategy_are_chosen_together(tiny_config, timing):
    """The conv is timed with the strategy decided for each conv candidate, so the pair that is
    best together wins: xla + vmap (1 ms). Timed under the strategy's rule ('unrolled' for 2
    tasks on CPU), im2col would win the conv (3 against 9 ms) and the run would take 3 ms."""
    tiny_config.method = "tag"
    strategy_ms = {"xla": {"unrolled": 9.0, "vmap": 1.0}, "im2col": {"unrolled": 3.0, "vmap": 4.0}}

    def timer(config, tunable, candidate):
        if tunable.path == "affinity.strategy":
            ms = strategy_ms[config.model.conv][candidate]
        else:  # the conv's time: its decided strategy's
            ms = strategy_ms[candidate][config.affinity.strategy]
        return [ms / 1e3] * 4

    config, record = autotune.resolve(
        tiny_config,
        None,
        len(TASKS),
        SHAPE,
        (autotune.CONV,) + methods.REGISTRY["tag"].tuned,
        timer=timer,
    )
    assert (config.model.conv, config.affinity.strategy) == ("xla", "vmap")
    assert record["model.conv"]["times_ms"] == pytest.approx({"xla": 1.0, "im2col": 3.0})


def test_explicit_values_are_never_timed(tiny_config, timing):
    tiny_config.method = "cs"
    tiny_config.model.conv, tiny_config.affinity.strategy = "im2col", "map"
    timer = FakeTimer({})
    config, record = resolve(tiny_config, timer)
    assert timer.calls == [] and not timing.exists()
    assert record == {
        "model.conv": {"choice": "im2col", "source": "explicit"},
        "affinity.strategy": {"choice": "map", "source": "explicit"},
    }
    assert (config.model.conv, config.affinity.strategy) == ("im2col", "map")


def test_rule_mode_times_nothing_and_leaves_auto(tiny_config, timing, monkeypatch):
    monkeypatch.setenv(autotune.MODE_ENV, "rule")
    timer = FakeTimer({})
    config, record = resolve(tiny_config, timer)
    assert timer.calls == [] and config.model.conv == "auto"
    assert record == {"model.conv": {"choice": "auto", "source": "rule"}}


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tiny_config, timing, caplog):
    timing.write_text("{not json")
    timer = FakeTimer({"xla": 2.0, "im2col": 1.0})
    config, _ = resolve(tiny_config, timer)
    assert config.model.conv == "im2col" and len(timer.calls) == 2
    assert "Ignoring the autotune cache" in caplog.text
    content = json.loads(timing.read_text())
    assert content["version"] == autotune_cache.CACHE_VERSION and len(content["decisions"]) == 1
    assert not [f for f in os.listdir(timing.parent) if f.endswith(".tmp")]


def test_a_candidate_too_large_for_memory_is_skipped(tiny_config, timing):
    def timer(config, tunable, candidate):
        if candidate == "im2col":
            raise step_timing.TooLarge("needs 900 GiB")
        return [1.0, 1.0]

    config, record = resolve(tiny_config, timer)
    assert config.model.conv == "xla"
    assert record["model.conv"]["times_ms"]["im2col"] is None
    assert "900 GiB" in record["model.conv"]["skipped"]["im2col"]


def test_a_hopeless_candidate_is_abandoned_after_two_steps(tiny_config, timing):
    consumed = {"xla": 0, "im2col": 0}

    def timer(config, tunable, candidate):
        for _ in range(autotune.TIMED_STEPS):
            consumed[candidate] += 1
            yield 0.001 if candidate == "xla" else 0.01

    config, record = resolve(tiny_config, timer)
    assert config.model.conv == "xla" and record["model.conv"]["times_ms"]["im2col"] == 10.0
    assert consumed == {"xla": autotune.TIMED_STEPS, "im2col": 2}
    slower = 1e-3 * (autotune.GIVE_UP_FIRST + 1)  # its first step is enough
    consumed.update(xla=0, im2col=0)
    tiny_config.batch_size = 16  # a new cache key
    timer_fn = timer

    def far_slower(config, tunable, candidate):
        for seconds in timer_fn(config, tunable, candidate):
            yield seconds if candidate == "xla" else slower

    resolve(tiny_config, far_slower)
    assert consumed == {"xla": autotune.TIMED_STEPS, "im2col": 1}


def test_slow_steps_are_timed_until_the_time_budget_after_two(tiny_config, timing):
    consumed = {"xla": 0, "im2col": 0}
    step_seconds = {
        "xla": 0.6 * autotune.CANDIDATE_SECONDS,
        "im2col": 0.5 * autotune.CANDIDATE_SECONDS,
    }

    def timer(config, tunable, candidate):
        for _ in range(autotune.TIMED_STEPS):
            consumed[candidate] += 1
            yield step_seconds[candidate]

    config, record = resolve(tiny_config, timer)
    assert consumed == {"xla": 2, "im2col": 3}  # stop once the steps took CANDIDATE_SECONDS
    assert config.model.conv == "im2col"
    assert record["model.conv"]["times_ms"]["xla"] == 1e3 * step_seconds["xla"]


def test_many_slices_drop_the_unrolled_candidate_and_few_the_mapped_one(tiny_config):
    tiny_config.method = "tag"
    assert autotune.get(tiny_config, "affinity.strategy") == "auto"
    tag = methods.REGISTRY["tag"].tuned[0]
    assert tag.candidates(tiny_config, 9) == ("unrolled", "vmap")
    assert tag.candidates(tiny_config, 40) == ("vmap", "map")
    tiny_config.affinity.order = "-1"  # 2^9 - 1 sources
    assert tag.candidates(tiny_config, 9) == ("vmap", "map")
    assert methods.REGISTRY["dmtg"].tuned[0].candidates(tiny_config, 9) == ("unrolled", "vmap")


def check_real_timing(config, settings):
    config.autotune_budget_seconds = 3600.0  # every candidate timed, however busy the machine
    method = methods.build(config, TASKS, SHAPE, steps_per_epoch=3)
    record = method.autotune
    assert set(record) == set(settings)
    for setting, decision in record.items():
        assert decision["source"] == "timed"
        assert decision["choice"] in decision["times_ms"]
        assert all(t > 0 for t in decision["times_ms"].values()), setting
    again = methods.build(config, TASKS, SHAPE, steps_per_epoch=3)
    assert {k: v["choice"] for k, v in again.autotune.items()} == {
        k: v["choice"] for k, v in record.items()
    }
    assert {v["source"] for v in again.autotune.values()} == {"cache"}


def test_methods_build_times_the_real_step_and_records_the_decision(tiny_config, timing):
    """The real timer, on the tiny shapes: each candidate compiled and stepped."""
    check_real_timing(tiny_config, {"model.conv"})


@pytest.mark.slow
def test_methods_build_times_the_measured_step_of_cs(tiny_config, timing):
    tiny_config.method = "cs"
    check_real_timing(tiny_config, {"model.conv", "affinity.strategy"})


@pytest.mark.slow
def test_timing_a_method_with_stacked_seeds_feeds_one_batch_per_seed(tiny_config, timing):
    tiny_config.method, tiny_config.groups.seeds = "random", 2
    tiny_config.groups.num_random_groups = 2
    check_real_timing(tiny_config, {"model.conv"})


class MixMethod:
    """Stands in for a Method: which steps exist and how often the measured one runs."""

    def __init__(self, measure_every, measured=True):
        self.train_step, self.measure_every = "train", measure_every
        self.measured_step = "measured" if measured else None


def test_step_mix_weights_each_step_by_how_often_the_run_takes_it():
    assert step_timing.step_mix(MixMethod(10)) == [("train", 0.9), ("measured", 0.1)]
    assert step_timing.step_mix(MixMethod(1)) == [("measured", 1.0)]
    assert step_timing.step_mix(MixMethod(10, measured=False)) == [("train", 1.0)]


def test_a_mix_is_timed_as_the_weighted_mean_of_one_step_of_each_kind(monkeypatch):
    """model.conv is decided on the run's mix: 9 train steps of 10 ms and one measured step of
    1,000 ms cost 109 ms a step, not the train step's 10 ms."""
    seconds = {"train": 0.010, "measured": 1.0}
    monkeypatch.setattr(
        step_timing,
        "compile_step",
        lambda method, kind, batch: (step_timing.pick_step(method, kind), None, batch),
    )
    monkeypatch.setattr(
        step_timing, "run_steps", lambda compiled, state, batch, steps: (state, [seconds[compiled]])
    )
    times = list(step_timing.time_method_step(MixMethod(10), "mix", {}, steps=3))
    assert times == pytest.approx([0.9 * 0.010 + 0.1 * 1.0] * 3)
    assert autotune.CONV.step == "mix"


def test_a_fresh_joint_decision_reports_every_setting_as_timed(tiny_config, timing):
    """The strategy decided inside the conv's timing is the record reported (source 'timed'),
    not re-read from the cache; nothing is timed twice."""
    tiny_config.method = "tag"
    timer = FakeTimer({"xla": 5.0, "im2col": 3.0, "unrolled": 9.0, "vmap": 2.0})
    _, record = resolve(tiny_config, timer)
    assert {k: v["source"] for k, v in record.items()} == {
        "model.conv": "timed",
        "affinity.strategy": "timed",
    }
    assert len(timer.calls) == 6  # 2 strategies for each of 2 convs, 2 convs: none again


def test_a_conv_under_which_no_strategy_fits_is_skipped(tiny_config, timing):
    """Every strategy too large under im2col: im2col is skipped, xla chosen; the run goes on."""
    tiny_config.method = "tag"

    def timer(config, tunable, candidate):
        if tunable.path == "affinity.strategy" and config.model.conv == "im2col":
            raise step_timing.TooLarge("needs more memory than there is")
        return [0.002] * 4

    config, record = autotune.resolve(
        tiny_config,
        None,
        len(TASKS),
        SHAPE,
        (autotune.CONV,) + methods.REGISTRY["tag"].tuned,
        timer=timer,
    )
    assert config.model.conv == "xla"
    assert "im2col" in record["model.conv"]["skipped"]


class Clock:
    """A clock that moves only when a timed step says it took its seconds."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def clocked_steps(clock, seconds_of):
    """timer(config, tunable, candidate) stepping TIMED_STEPS times seconds_of(config, tunable,
    candidate), each step moving `clock`; records the steps each candidate took."""
    taken = {}

    def timer(config, tunable, candidate):
        for _ in range(autotune.TIMED_STEPS):
            clock.now += seconds_of(config, tunable, candidate)
            taken[tunable.path, candidate] = taken.get((tunable.path, candidate), 0) + 1
            yield seconds_of(config, tunable, candidate)

    return timer, taken


def test_a_spent_budget_keeps_the_best_timed_so_far_and_says_so(tiny_config, timing, caplog):
    """Steps of 1 s, a budget of 2.5 s: xla's third step spends it, so xla is timed on 3 steps,
    im2col never starts; the decision says what was not timed and is cached for this budget."""
    caplog.set_level("INFO")
    clock = Clock()
    timer, taken = clocked_steps(clock, lambda config, tunable, candidate: 1.0)
    config, record = resolve_with_budget(tiny_config, timer, autotune.Budget(2.5, clock))
    assert taken == {("model.conv", "xla"): 3}
    assert config.model.conv == "xla"
    decision = record["model.conv"]
    assert decision["times_ms"] == {"xla": 1e3, "im2col": None}
    assert (decision["untimed"], decision["budget_seconds"]) == (["im2col"], 2.5)
    assert "timing 2 candidates (xla, im2col)" in caplog.text
    assert "ran out: xla, the fastest of those timed (xla); not timed: im2col" in caplog.text
    # The same budget reuses the decision; a larger one times what was left out.
    _, again = resolve_with_budget(tiny_config, timer, autotune.Budget(2.5, clock))
    assert again["model.conv"]["source"] == "cache" and len(taken) == 1
    assert "im2col not timed within the budget of 2.5 s: a larger config.autotune" in caplog.text
    _, larger = resolve_with_budget(tiny_config, timer, autotune.Budget(100.0, clock))
    assert larger["model.conv"]["source"] == "timed" and larger["model.conv"].get("untimed") is None
    assert taken[("model.conv", "im2col")] == autotune.TIMED_STEPS
    assert "xla 1000.0 ms per step (4.0 s); about 4 s for the 1 left (budget left 96 s)" in (
        caplog.text
    )


def test_a_candidate_expected_to_overrun_the_budget_is_not_started(tiny_config, timing):
    """Steps of 1 s, a budget of 6 s: xla takes 4 s, leaving 2 s, less than a candidate takes."""
    clock = Clock()
    timer, taken = clocked_steps(clock, lambda config, tunable, candidate: 1.0)
    _, record = resolve_with_budget(tiny_config, timer, autotune.Budget(6.0, clock))
    assert taken == {("model.conv", "xla"): autotune.TIMED_STEPS}
    assert record["model.conv"]["untimed"] == ["im2col"]
    _, record = resolve_with_budget(tiny_config, timer, autotune.Budget(8.0, clock))
    assert taken[("model.conv", "im2col")] == autotune.TIMED_STEPS  # 4 s left: it fits
    assert record["model.conv"].get("untimed") is None


def test_a_budget_spent_inside_a_joint_decision_bounds_every_setting(tiny_config, timing):
    """TAG: the strategy is timed inside each conv candidate. Steps of 1 s and a budget of 2.5 s:
    under xla, 'unrolled' spends it (3 steps), 'vmap' never starts; xla's own mix is stepped
    once; im2col is never timed."""
    tiny_config.method = "tag"
    clock = Clock()
    timer, taken = clocked_steps(clock, lambda config, tunable, candidate: 1.0)
    config, record = resolve_with_budget(tiny_config, timer, autotune.Budget(2.5, clock))
    assert taken == {("affinity.strategy", "unrolled"): 3, ("model.conv", "xla"): 1}
    assert (config.model.conv, config.affinity.strategy) == ("xla", "unrolled")
    assert record["model.conv"]["untimed"] == ["im2col"]
    assert record["affinity.strategy"]["untimed"] == ["vmap"]


def test_a_budget_spent_before_any_timing_leaves_the_rule(tiny_config, timing, caplog):
    """Budget 0, the real timer: nothing compiled or cached; 'auto' stays for the rule."""
    caplog.set_level("INFO")
    tiny_config.autotune_budget_seconds = 0.0
    method = methods.build(tiny_config, TASKS, SHAPE, steps_per_epoch=3)
    decision = method.autotune["model.conv"]
    assert (decision["choice"], decision["source"]) == ("auto", "rule")
    assert "config.autotune_budget_seconds = 0" in decision["reason"]
    assert "decided by its rule" in caplog.text and not timing.exists()
    assert "compiled" not in caplog.text


def resolve_with_budget(config, timer, budget):
    registered = methods.REGISTRY[config.method]
    return autotune.resolve(
        config,
        None,
        len(TASKS),
        SHAPE,
        (autotune.CONV,) + registered.tuned,
        timer=timer,
        budget=budget,
    )


def test_a_nested_decision_logs_its_timing_at_verbosity_1_only(tiny_config, timing, caplog):
    """TAG: the strategy timed inside each conv candidate logs its choice at INFO, what it times
    only at --verbosity=1 (DEBUG); the conv decision logs both."""
    caplog.set_level("INFO")
    tiny_config.method = "tag"
    timer, _ = clocked_steps(Clock(), lambda config, tunable, candidate: 1.0)
    resolve_with_budget(tiny_config, timer, autotune.Budget(1e3, Clock()))
    assert "autotune model.conv: timing 2 candidates" in caplog.text
    assert "autotune model.conv: xla 1000.0 ms per step" in caplog.text
    assert caplog.text.count("autotune affinity.strategy: unrolled (ms per step: ") == 2
    assert "autotune affinity.strategy: timing" not in caplog.text
    assert "autotune affinity.strategy: vmap 1000.0 ms per step" not in caplog.text
