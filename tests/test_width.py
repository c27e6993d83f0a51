"""Every command's output within 80 columns, the width of a terminal nobody resized and of a file or pipe.

Each case draws a command's records at width 80, asserts that no line is wider
than 80 cells and compares the text with a golden snapshot
(``tests/golden/width80-*.txt``; ``pytest --update-golden`` rewrites them, see
``tests/conftest.py``). The records come from fixed inputs: no training, no
clock; paths are relative to ``tmp_path`` (the working directory here), so that a
line breaks at the same place on every machine. That the numbers in them are
right is tested elsewhere (test_trace, test_summary, test_evaluation, ...).

The help of the app and of every command (``width80-help-*``) is drawn by Typer,
so its snapshots follow the Typer version's layout; what they must keep is
checked on its own: no line over 80 cells, no ``<bool>``, nothing cut.
"""

from __future__ import annotations

import io
import math
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from helpers import DATA, TINY_MAPS, make_run, mnist_checkpoint, run_main
from rich.cells import cell_len
from rich.console import Console

from cnncli.cli import app
from cnncli.commands import evaluation, explain, features, predict, summary, training
from cnncli.commands.export import ExportResult
from cnncli.lecture import trace
from cnncli.records import history, runs

# The features and explain cases write and read image files.
pytest.importorskip("PIL.Image")

WIDTH = 80
CONFUSION_TITLE = "Confusion matrix (rows: true class, columns: predicted)"


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    if DATA is not None:
        monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


def draw(show: Callable[[Console], None], terminal: bool = False) -> str:
    buf = io.StringIO()
    show(Console(file=buf, width=WIDTH, force_terminal=terminal, color_system=None, highlight=False,
                 soft_wrap=False))
    return buf.getvalue()


def too_wide(text: str, width: int = WIDTH) -> list[str]:
    return [f"[{cell_len(line)}] {line}" for line in text.splitlines() if cell_len(line) > width]


# ------------------------------------------------------------------------------------ fixed records

def digit(kind: int) -> np.ndarray:
    """A 28×28 stroke picture (uint8): a bar, a ring or a bent line, as the eval and predict views draw."""
    y, x = np.mgrid[0:28, 0:28]
    if kind == 0:
        ink = np.abs(np.hypot(y - 14, x - 14) - 8) < 1.8
    elif kind == 1:
        ink = (np.abs(x - 14) < 2) & (y > 4) & (y < 24)
    else:
        ink = ((np.abs(y - 6) < 2) & (x > 7) & (x < 21)) | ((np.abs(x + y / 2 - 30) < 2) & (y >= 6) & (y < 24))
    return np.where(ink, 255, 0).astype(np.uint8)


def eval_record(model: str, classes: list[str], n: int, pictures: Callable[[int], np.ndarray], title: str,
                seed: int = 0) -> evaluation.EvalResult:
    """An evaluation of made-up predictions (seeded): scores and worst mistakes from evaluation's own code."""
    k = len(classes)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    images = np.stack([pictures(int(c)) for c in y])
    s = evaluation.scores(y, probs.argmax(axis=1), k, classes)
    loss = float(-np.log(probs[np.arange(n), y]).mean())
    return evaluation.EvalResult(
        model=model, checkpoint=Path(f"runs/{model}/best.npz"), dataset="fixed", split="test",
        n=s.n, loss=loss, accuracy=s.accuracy, top_k=min(3, k),
        top_k_accuracy=evaluation.top_k_accuracy(probs, y, 3), confusion=s.confusion, class_names=classes,
        per_class=s.per_class, confused_pairs=s.confused_pairs,
        worst=evaluation.worst_mistakes(probs, y, images, 6), dataset_title=title)


def colour(c: int) -> np.ndarray:
    """An 8×8 RGB picture of class c: its colour on stripes that run one way per class."""
    y, x = np.mgrid[0:8, 0:8]
    stripes = [x % 4 < 2, y % 4 < 2, (x + y) % 4 < 2][c]
    rgb = np.array([(90, 160, 255), (120, 255, 120), (255, 140, 120)][c], np.uint8)
    return np.where(stripes[None], rgb[:, None, None], 0).astype(np.uint8)


def training_view(here: Path) -> Callable[[Console], None]:
    from cnncli.render import training as render

    config = training.configure("lenet5", {"epochs": 3}, out=Path("runs/lenet5-demo"))
    start = training.RunStart(config, n_train=54_000, n_val=6_000, n_test=10_000, params=61_706,
                              steps_per_epoch=844, start_epoch=0, start_batch=0, run_dir=config.out)
    history = [training.EpochRecord(e, 2.3 * math.exp(-1.5 * e), 1 - 0.9 * math.exp(-1.5 * e),
                                    2.4 * math.exp(-1.5 * e), 1 - math.exp(-1.5 * e), 0.05 / e, 10_345.0 + e, 52.0)
                 for e in (1, 2, 3)]
    result = training.RunResult(config, config.out, "completed", 3, history, best_epoch=3,
                                best_val_acc=history[-1].val_acc, test_loss=0.0412, test_acc=0.9871,
                                n_test=10_000, seconds=158.0, dataset_title="MNIST",
                                test_scores=(runs.TestScore(runs.LAST, 3, 0.0412, 0.9871),
                                             runs.TestScore(runs.BEST, 3, 0.0412, 0.9871)),
                                files=("config.yaml", "metrics.csv", "gradients.csv", "last.npz", "best.npz",
                                       "test.json"))

    def show(console: Console) -> None:
        reporter = render.Reporter(console)
        reporter.start(start)
        for record in history:
            reporter.epoch_end(record)
        reporter.close()
        render.show_result(result, console)

    return show


def compare_view(here: Path) -> Callable[[Console], None]:
    from cnncli.render import compare as render

    folders = [make_run(Path("plain20"), 6, 6, rate=0.6), make_run(Path("resnet20"), 4, 10, rate=0.25,
                                                                     complete=False)]
    curves = history.curves(folders)
    results = [SimpleNamespace(config=SimpleNamespace(name=run.label), epochs_done=len(run.epochs),
                               history=[training.EpochRecord(**row) for row in runs.load(Path(run.folder)).metrics],
                               test_acc=0.97 if run.complete else None) for run in curves.runs]
    experiment = SimpleNamespace(folder=Path("runs/compare-demo"), epochs=10, settings={}, limit=None)
    result = SimpleNamespace(experiment=experiment, results=results, status="completed")
    return lambda console: render.show(result, curves, "table", console)


def features_view(here: Path) -> Callable[[Console], None]:
    from PIL import Image

    from cnncli.render import features as render

    Path("tiny.yaml").write_text(TINY_MAPS.format(c=1))
    mnist_checkpoint("tiny.yaml", Path("tiny.npz"), seed=4)
    Image.fromarray(digit(1), mode="L").save("one.png")
    result = features.features("tiny.yaml", Path("tiny.npz"), image=Path("one.png"), max_maps=4)
    return lambda console: render.show(result, "table", console)


def explained(method: str) -> Callable[[Path], Callable[[Console], None]]:
    def make(here: Path) -> Callable[[Console], None]:
        from PIL import Image

        from cnncli.render import explain as render

        Path("tiny.yaml").write_text(TINY_MAPS.format(c=1))
        mnist_checkpoint("tiny.yaml", Path("tiny.npz"), seed=4)
        Image.fromarray(digit(2), mode="L").save("seven.png")
        result = explain.explain("tiny.yaml", Path("tiny.npz"), image=Path("seven.png"), method=method)
        return lambda console: render.show(result, "table", console)
    return make


def network_trace(here: Path) -> Callable[[Console], None]:
    from cnncli.render import trace as render

    if DATA is None:
        pytest.skip("real MNIST files not available")
    Path("small.yaml").write_text("name: small\ninput: [1, 28, 28]\nclasses: 10\ntrain: {dataset: mnist}\n"
                                  "layers:\n  - conv: {filters: 4, kernel: 5, stride: 2}\n  - relu\n"
                                  "  - maxpool: {kernel: 2}\n  - flatten\n  - dense: {units: 10}\n")
    result = trace.run("small.yaml", sample=0, steps=3)
    return lambda console: render.show(result, "table", console)


def traced(**kwargs) -> Callable[[Path], Callable[[Console], None]]:
    def make(here: Path) -> Callable[[Console], None]:
        from cnncli.render import trace as render

        result = trace.run(**kwargs)
        return lambda console: render.show(result, "table", console)
    return make


def summarized(name: str) -> Callable[[Path], Callable[[Console], None]]:
    def make(here: Path) -> Callable[[Console], None]:
        from cnncli.render import summary as render

        result = summary.summarize(name)
        return lambda console: render.show_summary(result, "table", None, console)
    return make


def models_view(here: Path) -> Callable[[Console], None]:
    from cnncli.render import summary as render

    infos = summary.builtin_models()
    return lambda console: render.show_models(infos, "table", console)


def evaluated(model: str, classes: list[str], n: int, pictures, title: str):
    def make(here: Path) -> Callable[[Console], None]:
        from cnncli.render import evaluation as render

        result = eval_record(model, classes, n, pictures, title)
        return lambda console: render.show(result, "table", console)
    return make


def predict_view(here: Path) -> Callable[[Console], None]:
    from cnncli.render import predict as render

    guesses = [predict.Guess(7, "7", 0.8123), predict.Guess(1, "1", 0.1034), predict.Guess(2, "2", 0.0511)]
    result = predict.PredictResult(
        model="lenet5", checkpoint=Path("runs/lenet5-demo/best.npz"), dataset="mnist", dataset_title="MNIST",
        input="as is", top_k=3,
        predictions=[predict.ImagePrediction(Path("digits/seven.png"), digit(2)[None], guesses),
                     predict.ImagePrediction(Path("digits/a-long-name-for-a-photo-of-a-handwritten-one.png"),
                                             digit(1)[None], [guesses[1], guesses[0], guesses[2]])])
    return lambda console: render.show(result, "table", console)


def plot_curves(here: Path) -> Callable[[Console], None]:
    from cnncli.render import plot as render

    curves = history.curves([make_run(Path("fast"), 6, 6, rate=0.6),
                          make_run(Path("slow"), 4, 10, rate=0.25, complete=False)])
    return lambda console: render.show_curves(curves, "table", console)


def plot_gradients(here: Path) -> Callable[[Console], None]:
    from cnncli.render import plot as render

    gmap = history.gradient_map(make_run(Path("fast"), 6, 6, rate=0.6), all_layers=True)
    return lambda console: render.show_gradients(gmap, "table", console)


def exported(target: str) -> Callable[[Path], Callable[[Console], None]]:
    def make(here: Path) -> Callable[[Console], None]:
        from cnncli.render import export as render

        common = dict(model="lenet5", checkpoint=Path("runs/lenet5-demo/best.npz"), target=target, bytes=248_312,
                      input_name="input", input_shape=("batch", 1, 28, 28), output_name="output",
                      output_shape=("batch", 10), output_meaning="logits (softmax is in the loss)")
        if target == "onnx":
            result = ExportResult(path=Path("lenet5.onnx"), weights_path=None, opset=17, **common)
        else:
            result = ExportResult(path=Path("lenet5_model.py"), weights_path=Path("lenet5_model.pt"),
                                  class_name="Lenet5", **common)
        return lambda console: render.show(result, "table", console)
    return make


CASES: dict[str, Callable[[Path], Callable[[Console], None]]] = {
    "models": models_view,
    **{f"summarize-{name}": summarized(name) for name in ("lenet5", "vgg16", "resnet18", "googlenet")},
    "trace-slide-mlp": traced(),
    "trace-slide-conv": traced(model="slide-conv"),
    "trace-slide-maxpool": traced(model="slide-maxpool"),
    "trace-slide-avgpool": traced(model="slide-avgpool"),
    "trace-compare-slides": traced(compare_slides=True),
    "trace-steps": traced(loss="ce", steps=40),
    "trace-network-sample": network_trace,
    "eval-mnist": evaluated("lenet5", [str(c) for c in range(10)], 10_000, lambda c: digit(c % 3), "MNIST"),
    "eval-folder-3": evaluated("colours", ["blue", "green", "red"], 30, colour, "image folder pictures"),
    "predict": predict_view,
    "plot-curves": plot_curves,
    "plot-gradients": plot_gradients,
    "features": features_view,
    **{f"explain-{method}": explained(method) for method in ("gradcam", "occlusion")},
    "compare": compare_view,
    "export-onnx": exported("onnx"),
    "export-torch": exported("torch"),
    "train": training_view,
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_command_fits_80_columns(name, here, golden):
    text = draw(CASES[name](here))
    assert not too_wide(text), f"{name}: lines wider than {WIDTH} cells:\n" + "\n".join(too_wide(text))
    if name.startswith("eval-"):
        assert CONFUSION_TITLE in text  # one line, not wrapped to the width of a narrow matrix
    if name.startswith(("summarize-", "models", "eval-", "export-", "train")):
        assert "…" not in text, f"{name}: a cell was cut to fit"  # these outputs have no … of their own
    golden(f"width80-{name}.txt", text)


def _choices(callback) -> dict[str, list[str]]:
    """The choices of each option of a command, by parameter name: the values of the Enum it is declared as."""
    found = {}
    for name, hint in typing.get_type_hints(callback).items():
        for kind in (hint, *typing.get_args(hint)):
            if isinstance(kind, type) and issubclass(kind, Enum):
                found[name] = [member.value for member in kind]
    return found


#: The app ("") and each of its commands, whose --help the snapshots hold.
HELP = ["", *typer.main.get_command(app).commands]


@pytest.mark.parametrize("command", HELP, ids=[c or "cnncli" for c in HELP])
def test_every_help_fits_80_columns_with_every_word_whole(command, monkeypatch, capsys, golden):
    """`COLUMNS=80 cnncli CMD --help`: no line wider, no placeholder of a flag (<bool>), nothing cut (…), and every
    word of each option's help, every choice among them, shown whole (help once cut choice lists mid-word)."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    code, out, err = run_main([*([command] if command else []), "--help"], capsys)
    assert code == 0, err
    assert not too_wide(out), "\n".join(too_wide(out))
    assert "<bool>" not in out and "…" not in out
    assert "|" not in out  # Typer's placeholder for a choice joins the choices with |: a word stands there
    group = typer.main.get_command(app)
    shown = set(out.replace("│", " ").split())
    shown_command = group.commands[command] if command else group
    params = shown_command.params
    for name, text in [("the command", shown_command.help), *((p.name, p.help) for p in params)]:
        missing = [w for w in (text or "").split() if w not in shown]
        assert not missing, f"--help of {command or 'cnncli'}: {name}'s help lost {missing}"
    if command:
        for name, choices in _choices(group.commands[command].callback).items():
            said = {w.strip(".,;:()") for w in next(p for p in params if p.name == name).help.split()}
            assert set(choices) <= said, f"{command} {name}: its help names {said & set(choices)} of {choices}"
    golden(f"width80-help-{command or 'cnncli'}.txt", out)


def test_trace_on_a_terminal_keeps_to_its_width():
    """A terminal console takes the same path as a file, and does not recurse without end."""
    from cnncli.render import trace as render

    text = draw(lambda console: render.show(trace.run(compare_slides=True), "table", console), terminal=True)
    assert "The lecture's slips" in text and not too_wide(text)


def test_columns_sets_the_width_of_piped_output(monkeypatch, capsys):
    """`COLUMNS=100 cnncli backprop-trace --compare-slides | less`: no line wider than 100 (COLUMNS sets the
    width of piped output)."""
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run_main(["backprop-trace", "--compare-slides"], capsys)
    assert code == 0, err
    assert "SLIP" in out and not too_wide(out, 100)
    assert max(cell_len(line) for line in out.splitlines()) > WIDTH  # the reasons use the width given
