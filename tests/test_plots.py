"""Pictures read back: legends name what is drawn, colours follow items, titles fit, numbering."""

import matplotlib.colors
import numpy as np

from tag_jax import plots

TASKS = ["a", "b", "c", "d"]


def affinity_record(num_epochs=3):
    rng = np.random.default_rng(0)
    return {
        "method": "tag",
        "tasks": TASKS,
        "steps_recorded": 5,
        "matrix": rng.normal(size=(4, 4)).tolist(),
        "per_epoch": [rng.normal(size=(4, 4)).tolist() for _ in range(num_epochs)],
    }


def inside_figure(fig, artist) -> bool:
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), fig.bbox
    return (
        box.x0 >= frame.x0 - 1
        and box.x1 <= frame.x1 + 1
        and box.y0 >= frame.y0 - 1
        and box.y1 <= frame.y1 + 1
    )


def test_affinity_over_time_colours_follow_the_source_task_in_every_panel():
    record = affinity_record()
    fig = plots.affinity_over_time(record)
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == TASKS
    colour_of = {
        h.get_label(): matplotlib.colors.to_rgba(h.get_color()) for h in legend.legend_handles
    }
    for t, ax in enumerate(fig.axes[: len(TASKS)]):
        series = [line for line in ax.get_lines() if line.get_label() in TASKS]
        assert sorted(line.get_label() for line in series) == sorted(set(TASKS) - {TASKS[t]})
        for line in series:
            assert matplotlib.colors.to_rgba(line.get_color()) == colour_of[line.get_label()]
            u = TASKS.index(line.get_label())
            np.testing.assert_allclose(line.get_ydata(), [m[u][t] for m in record["per_epoch"]])


def test_groupings_number_groups_from_one_within_each_k_and_the_title_fits():
    selections = [
        {
            "max_groups": 2,
            "groups": [["a", "b"], ["c", "d"]],
            "assignment": {"a": ["a", "b"], "b": ["a", "b"], "c": ["c", "d"], "d": ["c", "d"]},
        },
        {
            "max_groups": 3,
            "groups": [["a"], ["b"], ["c", "d"]],
            "assignment": {"a": ["a"], "b": ["b"], "c": ["c", "d"], "d": ["c", "d"]},
        },
    ]
    fig = plots.groupings({"method": "tag", "tasks": TASKS, "selections": selections})
    (ax,) = fig.axes
    fig.canvas.draw()
    assert [label.get_text() for label in ax.get_yticklabels()] == [
        "k=2: group 1",
        "k=2: group 2",
        "k=3: group 1",
        "k=3: group 2",
        "k=3: group 3",
    ]
    assert inside_figure(fig, ax.title)
    assert len(ax.patches) == 2 + 2 + 1 + 1 + 2  # member cells


def test_heatmap_title_fits_and_dmtg_single_epoch_draws_bars():
    fig = plots.affinity_heatmap(affinity_record())
    assert inside_figure(fig, fig.axes[0].title)
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]
    record = {
        "tasks": TASKS,
        "probabilities": probabilities,
        "probabilities_per_epoch": [probabilities],
    }
    fig = plots.assignment_probabilities(record)
    for n, ax in enumerate(fig.axes[: len(TASKS)]):
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], probabilities[n])
        assert ax.get_title().endswith(f"group {int(np.argmax(probabilities[n]))}")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["group 0", "group 1", "group 2"]


def test_heatmap_colour_scale_is_set_by_the_off_diagonal_entries():
    """A diagonal 100x larger than the rest leaves the off-diagonal range the whole colour scale;
    the diagonal is masked (grey) and its values are written in the cells."""
    matrix = np.array(
        [[50.0, 0.2, -0.1, 0.0], [0.1, 80.0, 0.05, -0.3], [0.0, 0.1, 60.0, 0.2], [0.1, 0, 0, 90.0]]
    )
    record = {**affinity_record(), "matrix": matrix.tolist()}
    ax = plots.affinity_heatmap(record).axes[0]
    (image,) = ax.get_images()
    assert image.get_clim() == (-0.3, 0.3)
    drawn = image.get_array()
    np.testing.assert_array_equal(drawn.mask, np.eye(4, dtype=bool))
    rgba = image.to_rgba(drawn)
    np.testing.assert_allclose(rgba[1, 3], image.cmap(0.0))  # -0.3: the scale's red end
    np.testing.assert_allclose(rgba[0, 0], matplotlib.colors.to_rgba("lightgrey"))
    assert [t.get_text() for t in ax.texts] == ["50", "80", "60", "90"]


def test_matrix_image_is_rgb_cells_red_for_negative_blue_for_positive():
    image = plots.matrix_image([[1.0, -1.0]], cell=2)
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    assert image[0, 0, 2] > image[0, 0, 0] and image[0, 3, 0] > image[0, 3, 2]


def test_study_plot_draws_the_seed_spread_and_every_seed():
    rows = [
        {
            "label": "mtl",
            "k": 1,
            "test_total_error": 21.0,
            "trunk_passes": 100,
            "seconds": 5.0,
            "test_total_error_stats": {"std": 1.0, "values": [20.0, 22.0, 21.0]},
        },
        {
            "label": "tag",
            "k": 2,
            "test_total_error": 15.0,
            "trunk_passes": 300,
            "seconds": 9.0,
            "test_total_error_stats": {"std": 2.0, "values": [13.0, 17.0, 15.0]},
        },
    ]
    fig = plots.total_error_vs_compute(rows)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    for label, (low, high), seeds in (
        ("mtl", (20.0, 22.0), [20.0, 22.0, 21.0]),
        ("tag", (13.0, 17.0), [13.0, 17.0, 15.0]),
    ):
        segment = bars[label].lines[2][0].get_segments()[0]  # the vertical bar: mean ± std
        np.testing.assert_allclose(sorted(segment[:, 1]), [low, high])
        dots = [
            c for c in ax.collections if sorted(c.get_offsets()[:, 1].tolist()) == sorted(seeds)
        ]
        assert len(dots) == 1
    assert "3 seeds" in fig._suptitle.get_text()


def test_study_plot_gives_each_of_the_eleven_labels_its_own_colour():
    labels = [
        "cs",
        "dmtg",
        "dmtg one-shot",
        "gradnorm",
        "hoa",
        "mtl",
        "pcgrad",
        "random",
        "single",
        "tag",
        "uw",
    ]
    rows = [
        {
            "label": label,
            "k": 1,
            "test_total_error": 10.0 + i,
            "trunk_passes": 100 + i,
            "seconds": 1.0 + i,
        }
        for i, label in enumerate(labels)
    ]
    ax = plots.total_error_vs_compute(rows).axes[0]
    colours = {
        c.get_label(): matplotlib.colors.to_hex(c.lines[0].get_color()) for c in ax.containers
    }
    assert sorted(colours) == labels and len(set(colours.values())) == 11
