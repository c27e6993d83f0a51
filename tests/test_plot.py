"""``cnncli plot``: run folders read back, terminal charts (golden), files read back, JSON, user mistakes.

The run folders here are written with the run-folder writers (cnncli.records.runs, through
helpers.make_run) from numbers the tests choose, so that every chart is reproducible; that training
writes true numbers into them is tested in test_training.py.
"""

from __future__ import annotations

import io
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import RUN_LAYERS, make_run, run_main
from rich.console import Console

from cnncli.errors import UsageError
from cnncli.extras import install_hint
from cnncli.records import history, runs
from cnncli.render import charts
from cnncli.render import plot as render


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    return (make_run(tmp_path / "fast", 6, 6, rate=0.6),
            make_run(tmp_path / "slow", 4, 10, rate=0.25, complete=False))


def text_of(show, *args, width: int = 80, terminal: bool = False, no_color: bool = False) -> str:
    buf = io.StringIO()
    show(*args, Console(file=buf, width=width, force_terminal=terminal, no_color=no_color,
                        color_system="truecolor" if terminal else None))
    return buf.getvalue()


# --------------------------------------------------------------------------- reading run folders

def test_a_run_folder_reads_back_what_training_wrote(two_runs):
    fast = runs.load(two_runs[0])
    assert fast.complete and fast.epochs_planned == 6 and fast.model == "tiny"
    assert [r["epoch"] for r in fast.metrics] == [1, 2, 3, 4, 5, 6]
    assert fast.metrics[0]["train_loss"] == pytest.approx(2.3 * math.exp(-0.6), rel=1e-5)  # six digits kept
    assert len(fast.gradients) == 6 * len(RUN_LAYERS) and fast.gradients[1]["kind"] == "batchnorm"
    assert runs.load(two_runs[0] / "metrics.csv").path == two_runs[0]  # a file inside the folder names it


def test_curves_keep_the_runs_order_and_the_planned_epochs(two_runs):
    curves = history.curves([two_runs[1], two_runs[0]])
    assert [r.label for r in curves.runs] == ["slow", "fast"]
    assert curves.x_range == (1, 10)  # the slow run plans 10 epochs, 4 done
    assert curves.runs[0].complete is False and curves.runs[1].test_acc == 0.97


def test_gradient_map_shows_weight_layers_unless_all_are_asked_for(two_runs):
    default = history.gradient_map(two_runs[0])
    assert default.layers == ["conv1", "conv2", "fc"] and default.epochs == [1, 2, 3, 4, 5, 6]
    assert default.values[0][0] == pytest.approx(10.0 ** -3.1, rel=1e-5)
    every = history.gradient_map(two_runs[0], "update_ratio", all_layers=True)
    assert every.layers == [name for name, _ in RUN_LAYERS]
    assert every.values[1][0] == pytest.approx(10.0 ** -3.5, rel=1e-5)


def test_same_folder_names_are_told_apart_by_their_parents(tmp_path):
    a, b = make_run(tmp_path / "a" / "run", 2, 2), make_run(tmp_path / "b" / "run", 2, 2)
    assert [r.label for r in history.curves([a, b]).runs] == ["a/run", "b/run"]


# --------------------------------------------------------------------------- terminal charts (golden)

def test_curves_chart_snapshot(two_runs, golden):
    text = text_of(render.show_curves, history.curves(list(two_runs)), "table")
    golden("plot-curves.txt", text.replace(str(two_runs[1].parent), "<tmp>"))


def test_gradient_map_snapshot(two_runs, golden):
    golden("plot-gradients.txt", text_of(render.show_gradients, history.gradient_map(two_runs[0], all_layers=True),
                                         "table"))


def test_compare_error_charts_snapshot(two_runs, golden):
    """``compare``'s table and error charts (log axis), drawn from the two made-up runs."""
    from types import SimpleNamespace

    from cnncli.commands import training
    from cnncli.render import compare as render_compare

    curves = history.curves(list(two_runs))
    results = [SimpleNamespace(config=SimpleNamespace(name=run.label), epochs_done=len(run.epochs),
                               history=[training.EpochRecord(**row) for row in runs.load(Path(run.folder)).metrics],
                               test_acc=0.97 if run.complete else None) for run in curves.runs]
    experiment = SimpleNamespace(folder=Path("<experiment>"), epochs=10, settings={}, limit=None)
    result = SimpleNamespace(experiment=experiment, results=results, status="completed")
    golden("compare-errors.txt", text_of(lambda c: render_compare.show(result, curves, "table", c)))


def test_no_color_draws_with_markers_and_colour_draws_with_colours(two_runs):
    curves = history.curves(list(two_runs))
    plain = text_of(render.show_curves, curves, "table", terminal=True, no_color=True)
    assert "\x1b[3" not in plain and "\x1b[4" not in plain and charts.MARKERS[0] in plain
    coloured = text_of(render.show_curves, curves, "table", terminal=True)
    assert "\x1b[36m" in coloured and charts.MARKERS[0] not in coloured  # cyan lines, no markers
    heat = text_of(render.show_gradients, history.gradient_map(two_runs[0]), "table", terminal=True)
    assert "\x1b[48;2;" in heat  # cells as background colours


def test_a_chart_fits_the_width_it_is_given(two_runs):
    for width in (40, 60, 100):
        text = text_of(render.show_curves, history.curves(list(two_runs)), "table", width=width)
        chart_lines = [line for line in text.splitlines() if "┤" in line or "└" in line]
        assert chart_lines and max(len(line) for line in chart_lines) <= width


# --------------------------------------------------------------------------- chart pieces

@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.013, 0.018), (-3.0, 250.0), (97.1, 99.4), (5.0, 5.0), (1e-7, 3e-7)])
def test_nice_ticks_cover_the_range_at_round_even_steps(lo, hi):
    ticks = charts.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1
    (step,) = steps
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))


@pytest.mark.parametrize("lo,hi", [(4.53, 42.0), (0.01, 100.0), (1e-5, 10.0), (5.0, 5.0), (3.3, 3.9), (0.9, 95.0)])
def test_log_ticks_are_one_two_five_times_powers_of_ten_around_the_range(lo, hi):
    ticks = charts.log_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8 and ticks == sorted(set(ticks))
    mantissas = {round(t / 10 ** math.floor(math.log10(t) + 1e-9), 9) for t in ticks}
    assert mantissas <= {1, 2, 5}
    # None left out between the first and the last: 1-2-5 steps, or (many decades) powers of ten.
    ratios = {round(b / a, 9) for a, b in zip(ticks, ticks[1:])}
    assert ratios <= {2, 2.5} or ratios == {10}


def test_a_log_axis_draws_a_geometric_fall_as_a_straight_line_and_skips_what_is_not_positive():
    points = [(1, 100.0), (2, 10.0), (3, 1.0), (4, 0.0)]
    rows = charts.line_chart([charts.Series("a", points)], width=40, height=9, colour=False, log_y=True).plain
    rows = rows.splitlines()[:9]
    labelled = {i: row.split("┤")[0].strip() for i, row in enumerate(rows) if "┤" in row}
    assert labelled == {0: "100", 1: "50", 3: "20", 4: "10", 5: "5", 7: "2", 8: "1"}  # 50 and 5 mirror 2 and 20
    # Equal ratios, equal steps: 100, 10 and 1 (the markers) on the top, middle and bottom row.
    assert [i for i, row in enumerate(rows) if charts.MARKERS[0] in row] == [0, 4, 8]
    # Nothing positive (errors of 0 all through): drawn on a linear axis, not refused.
    flat = charts.line_chart([charts.Series("a", [(1, 0.0), (2, 0.0)])], width=40, height=4, colour=False,
                             log_y=True).plain
    assert flat == charts.line_chart([charts.Series("a", [(1, 0.0), (2, 0.0)])], width=40, height=4,
                                     colour=False).plain


def test_a_flat_line_lights_one_row_of_dots_at_its_value():
    text = charts.line_chart([charts.Series("a", [(1, 1.0), (9, 1.0)]), charts.Series("b", [(1, 0.0), (9, 0.0)])],
                             width=40, height=4, colour=True).plain
    rows = text.splitlines()[:4]
    assert rows[0].startswith("1.0 ┤") and rows[-1].startswith("0.0 ┤")
    top = rows[0].split("┤")[1].strip()
    assert set(top) == {chr(0x2800 + 0x01 + 0x08)}  # the top dot of both columns in every cell


def test_a_gap_breaks_the_line():
    text = charts.line_chart([charts.Series("a", [(1, 0.0), (2, None), (3, 1.0)])], width=30, height=4,
                             colour=True).plain
    cells = "".join(line.split("┤" if "┤" in line else "│")[1] for line in text.splitlines()[:4])
    assert sum(ch != " " for ch in cells) == 2  # two lone points, nothing between them


def test_charts_refuse_nothing_to_draw():
    with pytest.raises(ValueError, match="at least one finite value"):
        charts.line_chart([charts.Series("a", [(1, None)])], width=40, height=4, colour=False)
    with pytest.raises(ValueError, match="at least one positive value"):
        charts.heat_map(["a"], [1], [[None]], width=40, colour=False)


def test_heat_map_merges_columns_by_geometric_mean_when_they_do_not_fit():
    values = [[10.0 ** (k % 2) for k in range(200)]]  # 1, 10, 1, 10, ...
    merged, starts, spans = charts._merge_columns(values, list(range(1, 201)), 50)
    assert len(merged[0]) == 50 and spans[0] == (1, 4) and spans[-1] == (197, 200)
    assert all(v == pytest.approx(10 ** 0.5) for v in merged[0])


# --------------------------------------------------------------------------- the command

def test_json_holds_the_numbers_of_the_csv_files(two_runs, capsys):
    code, out, _ = run_main(["plot", str(two_runs[0]), str(two_runs[1]), "--format", "json"], capsys)
    assert code == 0
    record = json.loads(out)
    fast = runs.load(two_runs[0])
    assert record["runs"][0]["train_loss"] == [r["train_loss"] for r in fast.metrics]
    assert record["runs"][1]["complete"] is False and record["runs"][1]["epochs_planned"] == 10
    code, out, _ = run_main(["plot", str(two_runs[0]), "--gradients", "--format", "json"], capsys)
    grads = json.loads(out)
    assert [row["layer"] for row in grads["layers"]] == ["conv1", "conv2", "fc"]
    assert grads["layers"][2]["values"] == [r["grad_norm"] for r in fast.gradients if r["layer"] == "fc"]


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_files_are_written_whole_and_read_back(two_runs, tmp_path, capsys, suffix):
    pytest.importorskip("matplotlib")
    for args, name in (([str(two_runs[0]), str(two_runs[1])], "curves"), ([str(two_runs[0]), "--gradients"], "grads")):
        out = tmp_path / f"{name}{suffix}"
        code, stdout, err = run_main(["plot", *args, "--out", str(out)], capsys)
        assert code == 0, err
        assert f"wrote {out}" in " ".join(stdout.split())  # a long path may stand on a line of its own
        data = out.read_bytes()
        if suffix == ".png":
            from PIL import Image

            with Image.open(out) as image:
                image.load()
                assert image.width > 300 and image.height > 200
        elif suffix == ".svg":
            assert ET.fromstring(data).tag.endswith("svg")
        else:
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert not list(tmp_path.glob(".*.part"))


def test_a_run_still_training_is_drawn_with_what_it_has(tmp_path, capsys):
    folder = make_run(tmp_path / "running", 2, 8, complete=False)
    code, out, _ = run_main(["plot", str(folder)], capsys)
    assert code == 0 and "2 of 8 epochs so far" in out and f"--resume {folder}/last.npz" in out
    started = make_run(tmp_path / "started", 0, 8, complete=False, gradients=False)
    code, out, _ = run_main(["plot", str(folder), str(started)], capsys)
    assert code == 0 and "started: no finished epoch yet" in out


PROBLEMS = [
    (lambda t: [str(t / "nowhere")], "is not a run folder: no such folder"),
    (lambda t: [str((t / "empty").mkdir() or t / "empty")], "it has no config.yaml"),
    (lambda t: [str(make_run(t / "r", 0, 3, complete=False, gradients=False))], "no epoch has finished yet"),
    (lambda t: [str(make_run(t / "r", 2, 3)), "--out", str(t / "c.jpg")], "must be one of .png, .svg, .pdf"),
    (lambda t: [str(make_run(t / "a", 2, 3)), str(make_run(t / "b", 2, 3)), "--gradients"],
     "--gradients draws one run, got 2"),
    (lambda t: [str(make_run(t / "r", 2, 3, gradients=False)), "--gradients"],
     "did not record gradient flow"),
    (lambda t: [str(make_run(t / "r", 2, 3)), "--out", str(t / "missing" / "c.png")], "cannot write --out"),
]


@pytest.mark.parametrize("args,message", PROBLEMS, ids=[m for _, m in PROBLEMS])
def test_mistakes_exit_2_with_a_message(tmp_path, capsys, args, message):
    if "cannot write" in message:
        pytest.importorskip("matplotlib")
    code, _, err = run_main(["plot", *args(tmp_path)], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_foreign_csv_is_named_with_its_header(tmp_path, capsys):
    folder = make_run(tmp_path / "r", 2, 2)
    (folder / runs.METRICS).write_text("step,loss\n1,0.5\n")
    code, _, err = run_main(["plot", str(folder)], capsys)
    assert code == 2 and "is not a cnncli metrics.csv: its header is step,loss" in err


def test_the_error_figure_has_a_log_panel_for_training_and_one_for_validation(two_runs):
    pytest.importorskip("matplotlib")
    from cnncli.render import figures

    curves = history.curves(list(two_runs))
    fig = figures.curves_figure(curves, error=True)
    assert [ax.get_ylabel() for ax in fig.axes] == ["training error (%)", "validation error (%)"]
    assert all(ax.get_yscale() == "log" for ax in fig.axes) == history.ERRORS_ON_LOG_AXIS
    for ax, key in zip(fig.axes, ("train_acc", "val_acc")):
        assert [line.get_label() for line in ax.get_lines()] == ["fast", "slow"]
        for line, run in zip(ax.get_lines(), curves.runs):
            assert list(line.get_ydata()) == pytest.approx([100 * (1 - v) for v in run.values[key]])


def test_files_without_matplotlib_name_the_extra(two_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    code, _, err = run_main(["plot", str(two_runs[0]), "--out", str(tmp_path / "c.png")], capsys)
    assert code == 2 and install_hint("plots") in err
    assert not (tmp_path / "c.png").exists()


def test_plot_checks_its_arguments_before_reading(tmp_path):
    with pytest.raises(UsageError, match="at least one run folder"):
        history.curves([])
    with pytest.raises(UsageError, match="--metric must be one of"):
        history.gradient_map(tmp_path, "norm")
