"""The ``python -m selection`` command line."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from selection import cli, load_scores, select_groups
from selection.cli import main

TASKS = ["a", "b", "c", "d", "e"]
# Rows are SOURCES here (affinity.json layout); strongly asymmetric so that
# reading it the wrong way round changes the answer.
SOURCE_TARGET = [
    [0.0, 0.9, 0.8, -0.5, -0.4],
    [-0.9, 0.0, 0.7, -0.3, -0.6],
    [-0.8, -0.7, 0.0, 0.6, 0.5],
    [0.2, 0.4, -0.2, 0.0, 0.9],
    [0.1, 0.3, -0.9, -0.8, 0.0],
]


def run(argv, capsys):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def affinity_file(tmp_path):
    path = tmp_path / "affinity.json"
    path.write_text(
        json.dumps(
            {
                "method": "tag",
                "tasks": TASKS,
                "orientation": "matrix[source][target]",
                "matrix": SOURCE_TARGET,
                "per_epoch": [SOURCE_TARGET],
                "steps_recorded": 7,
            }
        )
    )
    return path


def onto_from():
    return (TASKS, np.array(SOURCE_TARGET).T)


def test_affinity_file_is_transposed(affinity_file, capsys):
    status, out, _ = run(["groups", "--scores", affinity_file, "--max-groups", 2, "--json"], capsys)
    assert status == 0
    [result] = json.loads(out)
    expected = select_groups(onto_from(), max_groups=2)
    assert result == {"max_groups": 2, **expected.to_dict()}
    wrong_way = select_groups((TASKS, np.array(SOURCE_TARGET)), max_groups=2)
    assert wrong_way.groups != expected.groups, "the instance must tell the orientations apart"


def test_dict_of_dicts_and_transpose_flag(tmp_path, capsys):
    by_source = {
        s: {t: SOURCE_TARGET[i][j] for j, t in enumerate(TASKS) if i != j}
        for i, s in enumerate(TASKS)
    }
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(by_source))
    _, out, _ = run(
        ["groups", "--scores", path, "--max-groups", 2, "--json", "--transpose"], capsys
    )
    assert json.loads(out)[0]["groups"] == [
        list(g) for g in select_groups(onto_from(), max_groups=2).groups
    ]
    _, out, _ = run(["groups", "--scores", path, "--max-groups", 2, "--json"], capsys)
    as_given = select_groups((TASKS, np.array(SOURCE_TARGET)), max_groups=2)
    assert json.loads(out)[0]["groups"] == [list(g) for g in as_given.groups]


def test_several_max_groups_minimize_and_diagonal(tmp_path, capsys):
    errors = np.abs(np.array(SOURCE_TARGET)) + np.eye(5) * 0.35
    path = tmp_path / "errors.json"
    path.write_text(
        json.dumps({t: {u: errors[i, j] for j, u in enumerate(TASKS)} for i, t in enumerate(TASKS)})
    )
    _, out, _ = run(
        [
            "groups",
            "--scores",
            path,
            "--max-groups",
            2,
            3,
            4,
            "--minimize",
            "--singletons",
            "diagonal",
            "--json",
        ],
        capsys,
    )
    results = json.loads(out)
    assert [r["max_groups"] for r in results] == [2, 3, 4]
    for r in results:
        expected = select_groups(
            (TASKS, errors), max_groups=r["max_groups"], objective="minimize", singletons="diagonal"
        )
        assert r["score"] == expected.score and r["gap"] == 0.0
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_text_report(affinity_file, capsys):
    status, out, _ = run(["groups", "--scores", affinity_file, "--max-groups", 2], capsys)
    expected = select_groups(onto_from(), max_groups=2)
    assert status == 0
    assert f"score {expected.score:.6g} (proven optimal)" in out
    assert "  group 1: " + ", ".join(expected.groups[0]) in out
    assert len([line for line in out.splitlines() if " -> group " in line]) == 5


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "No such file"),
        ("{not json", "not valid JSON"),
        ('{"a": {"b": NaN}, "b": {"a": 1}}', "not a finite number"),
        ('{"a": {"b": 1, "zz": 2}, "b": {"a": 1}}', "unknown task 'zz'"),
        (
            '{"tasks": ["a", "b"], "orientation": "matrix[source][target]", "matrix": [[0, 1]]}',
            "shape",
        ),
        (
            '{"tasks": ["a", "b", "c"], "orientation": "matrix[source][target]", '
            '"matrix": [[0, 1, 2], [1, 0, 2]]}',
            "shape (2, 3), expected (3, 3)",
        ),  # as in the file
        (
            '{"a": {"a": 1, "b": 0.1}, "b": {"a": 0.2, "b": 1}, "a": {"a": 1, "b": 0.5}}',
            "key 'a' appears twice",
        ),
        ('{"a": {"b": 0.1, "b": 0.3}, "b": {"a": 0.2}}', "key 'b' appears twice"),
        ('{"tasks": ["a", "b"], "matrix": [[0, 1], [1, 0]]}', "orientation"),
        ("[1, 2]", "must be an object"),
        (
            '{"a": {"b": 1%s}, "b": {"a": 1}}' % ("0" * 400),
            "score onto 'a' from 'b' is not a finite number",
        ),
        (
            '{"tasks": ["a", "b"], "orientation": "matrix[source][target]", '
            '"matrix": [[0, 1%s], [1, 0]]}' % ("0" * 400),
            "score matrix is not numeric",
        ),
        (
            '{"tasks": ["a", "b"], "orientation": "matrix[source][target]", "matrix": %s1%s}'
            % ("[" * 500, "]" * 500),
            "score matrix is not numeric",
        ),
        ('{"a": {"b": 1%s}, "b": {"a": 1}}' % ("0" * 5000), "not valid JSON (Exceeds the limit"),
        (
            b'{"a": {"b": 1}, "b": {"a": 1}, "\xff": {}}',
            "not valid JSON ('utf-8' codec can't decode",
        ),
    ],
)
def test_bad_score_files_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "scores.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    status, out, err = run(["groups", "--scores", path, "--max-groups", 2], capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


PAIRS_KEYS = ("validation_loss", "validation_error", "test_loss", "test_error")


@pytest.fixture
def pairs_file(tmp_path):
    """A pairs.json as tag_jax's HOA 'pairs' method writes it, and its tables as arrays."""
    rng = np.random.default_rng(0)
    tables = {key: rng.uniform(0.1, 1.0, size=(5, 5)) for key in PAIRS_KEYS}
    record = {"tasks": TASKS}
    record.update(
        {
            key: {t: {u: float(m[i, j]) for j, u in enumerate(TASKS)} for i, t in enumerate(TASKS)}
            for key, m in tables.items()
        }
    )
    record["orientation"] = (
        "scores[t][u] = value of t in the network trained on {t, u}; diagonal = t alone"
    )
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(record))
    return path, tables


def hoa_groups(matrix, k=3):
    return select_groups((TASKS, matrix), max_groups=k, objective="minimize", singletons="diagonal")


def test_pairs_file_reads_validation_loss_as_onto_from(pairs_file, capsys):
    path, tables = pairs_file
    # the README's command on a pairs.json
    status, out, err = run(
        [
            "groups",
            "--scores",
            path,
            "--max-groups",
            3,
            "--minimize",
            "--singletons",
            "diagonal",
            "--json",
        ],
        capsys,
    )
    assert status == 0, err
    expected = hoa_groups(tables["validation_loss"])
    assert json.loads(out) == [{"max_groups": 3, **expected.to_dict()}]
    assert hoa_groups(tables["validation_loss"].T).groups != expected.groups, (
        "orientation must matter"
    )
    assert load_scores(path)[1].tolist() == tables["validation_loss"].tolist()


@pytest.mark.parametrize("key", PAIRS_KEYS)
def test_pairs_key_picks_the_table(pairs_file, capsys, key):
    path, tables = pairs_file
    _, out, _ = run(
        [
            "groups",
            "--scores",
            path,
            "--max-groups",
            3,
            "--minimize",
            "--singletons",
            "diagonal",
            "--pairs-key",
            key,
            "--json",
        ],
        capsys,
    )
    assert json.loads(out)[0]["groups"] == [list(g) for g in hoa_groups(tables[key]).groups]
    tasks, matrix = load_scores(path, pairs_key=key)
    assert tasks == tuple(TASKS) and matrix.tolist() == tables[key].tolist()
    if key == "test_error":
        assert hoa_groups(tables[key]).groups != hoa_groups(tables["validation_loss"]).groups


def test_bad_pairs_usage_exits_2_with_one_line(pairs_file, tmp_path, capsys):
    path, _ = pairs_file
    record = json.loads(path.read_text())
    only_validation = tmp_path / "only_validation.json"
    only_validation.write_text(
        json.dumps({"tasks": TASKS, "validation_loss": record["validation_loss"]})
    )
    wrong_tasks = tmp_path / "wrong_tasks.json"
    wrong_tasks.write_text(json.dumps({**record, "tasks": TASKS[:4]}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(record["test_loss"]))
    for argv, message in [
        (
            [only_validation, "--pairs-key", "test_loss"],
            "pairs file has no 'test_loss' table (it has validation_loss)",
        ),
        ([wrong_tasks], "pairs file's 'validation_loss' has tasks"),
        ([path, "--transpose"], "do not transpose it"),
        ([plain, "--pairs-key", "test_loss"], "only applies to a pairs.json"),
    ]:
        status, out, err = run(["groups", "--scores", *argv, "--max-groups", 2], capsys)
        assert status == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("content", ["[" * 100000, '{"a": ' * 100000, "[" * 3000 + "]" * 3000])
def test_deeply_nested_json_exits_2_with_one_line(tmp_path, content):
    """json raises RecursionError on these; the command line must not show a traceback."""
    path = tmp_path / "deep.json"
    path.write_text(content)
    completed = subprocess.run(
        [sys.executable, "-m", "selection", "groups", "--scores", str(path), "--max-groups", "2"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"python -m selection groups: error: {path}: JSON nested too deeply to read"
    ]


@pytest.fixture
def network_files(tmp_path):
    val = tmp_path / "val.csv"
    val.write_text(
        "tasks,cost,a,b,c\na,0.5,0.30,,\nb,0.5,,0.40,\nc,0.5,,,0.50\n"
        "a+b,1,0.20,0.35,\na+c,1,0.25,,0.45\nb+c,1,,0.30,0.60\na+b+c,1,0.50,0.50,0.50\n"
    )
    test = tmp_path / "test.csv"
    test.write_text(
        "tasks,cost,a,b,c\na,0.5,0.31,,\nb,0.5,,0.41,\nc,0.5,,,0.51\n"
        "a+b,1,0.21,0.36,\na+c,1,0.26,,0.46\nb+c,1,,0.31,0.61\na+b+c,1,0.51,0.51,0.51\n"
    )
    return val, test


def test_networks_command(network_files, capsys):
    val, test = network_files
    status, out, _ = run(
        ["networks", "--networks", val, "--budget", 1.5, "--test", test, "--json"], capsys
    )
    assert status == 0
    result = json.loads(out)
    assert [n["tasks"] for n in result["networks"]] == [["c"], ["a", "b"]]
    assert result["total"] == 0.20 + 0.35 + 0.50  # summed in task order a, b, c
    assert result["test_total"] == 0.21 + 0.36 + 0.51
    assert result["gap"] == 0.0
    status, out, _ = run(["networks", "--networks", val, "--budget", 1.5, "--test", test], capsys)
    assert status == 0
    assert (
        out.splitlines()[0]
        == f"budget 1.5: total {0.20 + 0.35 + 0.50:.6g} (proven optimal), test total 1.08"
    )


def test_networks_command_stops_at_the_time_limit(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(12)]
    rows = [
        f"{t},0.5," + ",".join(f"{rng.uniform(0.5, 1):.4f}" if u == t else "" for u in tasks)
        for t in tasks
    ]
    for _ in range(286):
        members = set(rng.choice(tasks, int(rng.integers(2, 7)), replace=False))
        rows.append(
            "+".join(t for t in tasks if t in members)
            + ",1,"
            + ",".join(f"{rng.uniform(0.2, 1):.4f}" if t in members else "" for t in tasks)
        )
    path = tmp_path / "networks.csv"
    path.write_text("tasks,cost," + ",".join(tasks) + "\n" + "\n".join(rows) + "\n")
    start = time.monotonic()
    status, out, _ = run(
        ["networks", "--networks", path, "--budget", 3, "--time-limit", 0.5, "--json"], capsys
    )
    assert time.monotonic() - start < 0.5 + 2.0
    result = json.loads(out)
    assert status == 0 and result["gap"] > 0 and sum(n["cost"] for n in result["networks"]) <= 3
    status, out, _ = run(
        ["networks", "--networks", path, "--budget", 3, "--time-limit", 0.2], capsys
    )
    assert status == 0 and ": not proven optimal)" in out.splitlines()[0]
    status, _, err = run(["networks", "--networks", path, "--budget", 3, "--time-limit", 0], capsys)
    assert status == 2 and "time_limit must be positive" in err


def test_networks_command_with_hoa(network_files, capsys):
    val, _ = network_files
    _, out, _ = run(["networks", "--networks", val, "--budget", 1, "--hoa", "--json"], capsys)
    result = json.loads(out)
    # HOA replaces a+b+c by pair means: a (0.20+0.25)/2, b (0.35+0.30)/2, c (0.45+0.60)/2.
    losses = {"a": (0.20 + 0.25) / 2, "b": (0.35 + 0.30) / 2, "c": (0.45 + 0.60) / 2}
    assert result["networks"][0]["losses"] == losses
    assert result["total"] == losses["a"] + losses["b"] + losses["c"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("tasks,cost,a\na,1,\n", "line 2"),
        (b"tasks,cost,a\na,1,0.\xff\n", "not UTF-8 text"),
        ("tasks,cost,a\na,1," + "1" * 200000 + "\n", "field larger than field limit"),
    ],
)
def test_bad_network_file_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    status, _, err = run(["networks", "--networks", path, "--budget", 1], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_progress_lines_on_stderr_end_with_the_stop(affinity_file, capsys):
    status, out, err = run(
        ["groups", "--scores", affinity_file, "--max-groups", 2, 3, "--progress"], capsys
    )
    assert status == 0
    lines = err.splitlines()
    assert lines and all(line.startswith("max groups ") for line in lines)
    for k in (2, 3):
        mine = [line for line in lines if line.startswith(f"max groups {k}:")]
        assert mine[-1].endswith("(stopped)") and "proven optimal" in mine[-1]
        assert sum(line.endswith("(stopped)") for line in mine) == 1
    assert out == run(["groups", "--scores", affinity_file, "--max-groups", 2, 3], capsys)[1]


def test_python_dash_m_entry_point(affinity_file):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "selection",
            "groups",
            "--scores",
            str(affinity_file),
            "--max-groups",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)[0]["groups"] == [
        list(g) for g in select_groups(onto_from(), max_groups=2).groups
    ]


REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "networks_example.csv"  # four tasks, singles cost 0.5, pairs 1


def selection_process(*argv):
    """(seconds, CompletedProcess) of ``python -m selection ARGV`` as a separate process."""
    start = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "selection", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return time.monotonic() - start, completed


@pytest.mark.parametrize("budget", [0.5, 1])
def test_networks_budget_that_cannot_cover_every_task_is_an_error(budget):
    # Each network outputs at most two tasks at 0.5 per task: covering the four takes 2.
    _, completed = selection_process("networks", "--networks", EXAMPLE, "--budget", budget)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"python -m selection networks: error: no selection of cost at most {budget:g} outputs "
        "every task: the smallest budget that covers all 4 tasks is 2; raise --budget to 2, or "
        "pass --allow-uncovered to accept a selection that leaves tasks uncovered (each counts "
        "99 in the total)"
    ]


def test_networks_allow_uncovered_lists_the_uncovered_tasks_and_their_cost():
    # budget 1 buys two singles or one pair: edges+keypoints (0.021 + 0.031) beats the singles
    # edges, keypoints (0.021 + 0.034) and every other choice; depth and normal count 99 each.
    _, completed = selection_process(
        "networks", "--networks", EXAMPLE, "--budget", 1, "--allow-uncovered"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        f"budget 1: total {0.021 + 0.031 + 2 * 99:.6g} (proven optimal)",
        "  edges+keypoints (cost 1)",
        "  uncovered: depth, normal (no chosen network outputs them; each counts 99 in the total)",
    ]
    # budget 0.5 buys one single: edges (0.021), the lowest loss of any single
    _, completed = selection_process(
        "networks", "--networks", EXAMPLE, "--budget", 0.5, "--allow-uncovered", "--json"
    )
    result = json.loads(completed.stdout)
    assert [n["tasks"] for n in result["networks"]] == [["edges"]]
    assert result["uncovered"] == ["depth", "normal", "keypoints"]
    assert result["uncovered_loss"] == 99
    assert result["total"] == pytest.approx(0.021 + 3 * 99)


def test_networks_sufficient_budget_answer_is_unchanged():
    # budget 2: depth+normal and edges+keypoints, 0.165 + 0.091 + 0.021 + 0.031 = 0.308; the
    # four singles total 0.321, the other pairings 0.319 and 0.314, a pair and two singles more.
    expected = [
        f"budget 2: total {0.165 + 0.091 + 0.021 + 0.031:.6g} (proven optimal)",
        "  depth+normal (cost 1)",
        "  edges+keypoints (cost 1)",
    ]
    for extra in ([], ["--allow-uncovered"]):
        _, completed = selection_process("networks", "--networks", EXAMPLE, "--budget", 2, *extra)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines() == expected and completed.stderr == ""
    _, completed = selection_process("networks", "--networks", EXAMPLE, "--budget", 2, "--json")
    assert json.loads(completed.stdout)["uncovered"] == []


def random_affinity_file(path, n, seed):
    """An affinity.json of n tasks with independent N(0, 1) entries."""
    rng = np.random.default_rng(seed)
    path.write_text(
        json.dumps(
            {
                "tasks": [f"task{i}" for i in range(n)],
                "orientation": "matrix[source][target]",
                "matrix": rng.normal(size=(n, n)).round(6).tolist(),
            }
        )
    )
    return path


def assert_groups_keep_the_time_limit(path, n, ks, limit):
    """Run the groups command as a process: each k (by its --progress "stopped" line) within
    1.1 * limit + 1 s, the whole process within 1.1 * limit * len(ks) + 1 s."""
    seconds, completed = selection_process(
        "groups", "--scores", path, "--max-groups", *ks, "--time-limit", limit, "--progress"
    )
    assert completed.returncode == 0, completed.stderr
    stopped = [line.split() for line in completed.stderr.splitlines() if "(stopped)" in line]
    assert [int(words[2].rstrip(":")) for words in stopped] == list(ks)
    assert all(float(words[3]) <= 1.1 * limit + 1.0 for words in stopped), stopped
    assert seconds <= 1.1 * limit * len(ks) + 1.0
    assert sum(" -> group " in line for line in completed.stdout.splitlines()) == n * len(ks)


def test_groups_time_limit_holds_per_k_and_in_total_at_500_tasks(tmp_path):
    path = random_affinity_file(tmp_path / "affinity.json", 500, 0)
    assert_groups_keep_the_time_limit(path, 500, (2, 3), 2.0)


@pytest.mark.slow
def test_groups_time_limit_of_ten_seconds_at_500_tasks(tmp_path):
    """The case of the report: --time-limit 10 took 13.7 to 14.0 s per k, 24 s for k = 2 and 3."""
    path = random_affinity_file(tmp_path / "affinity.json", 500, 1)
    assert_groups_keep_the_time_limit(path, 500, (2, 3), 10.0)


def test_time_limits_count_from_the_start_and_share_it_between_ks(affinity_file, capsys):
    # three ks of at most 60 s, started 100 s ago: 80 s are left for all three; the first gets
    # a third of them, the second half of what is left then, the last all of it, up to 60 s
    started = time.monotonic() - 100.0
    assert cli._time_limit(60.0, 3, 3, started) == pytest.approx(80.0 / 3, abs=0.2)
    assert cli._time_limit(60.0, 2, 3, started) == pytest.approx(40.0, abs=0.2)
    assert cli._time_limit(60.0, 1, 3, started) == 60.0
    assert cli._time_limit(60.0, 1, 1, started) == cli.SHORTEST_LIMIT  # due 40 s ago
    with pytest.raises(ValueError, match="time_limit must be positive"):
        cli._time_limit(0.0, 1, 1, started)
    argv = ["groups", "--scores", str(affinity_file), "--max-groups", "2", "3", "--json"]
    assert main(argv, started=time.monotonic() - 200.0) == 0  # out of time: answers all the same
    results = json.loads(capsys.readouterr().out)
    assert [r["max_groups"] for r in results] == [2, 3] and all(r["groups"] for r in results)


def test_process_start_is_before_now():
    started = cli.process_start()
    assert time.monotonic() - cli.MAX_START_SECONDS <= started <= time.monotonic()
