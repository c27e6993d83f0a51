"""``cnncli export``: a trained model handed to another engine, as a file that engine reads.

``--to onnx`` writes the inference network as an ONNX graph
(:mod:`cnncli.exchange.onnx_model` says what is in it); ``--to torch`` a PyTorch
module's source (``model.py``) and its state dict beside it (``model.pt``)
(:mod:`cnncli.exchange.torch_module`). The weights are a
checkpoint's (``train``'s ``best.npz`` or ``last.npz``); the images the graph
expects are prepared as the run prepared them, which its ``config.yaml`` records
(input adaptation, the dataset's mean and standard deviation). The file is
written whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnncli import atomic
from cnncli.atomic import write_atomic
from cnncli.errors import UsageError
from cnncli.model.head import HeadChange
from cnncli.records import trained

#: Export targets: name -> the file suffix they write.
TARGETS = {"onnx": ".onnx", "torch": ".py"}


@dataclass(frozen=True)
class ExportResult:
    model: str
    checkpoint: Path
    target: str
    path: Path
    bytes: int
    weights_path: Path | None
    input_name: str
    input_shape: tuple
    output_name: str
    output_shape: tuple
    output_meaning: str
    opset: int | None = None
    class_name: str | None = None
    head: tuple[HeadChange, ...] = ()  # heads sized as the weights file holds them (it records no classes)


def export(model: str, checkpoint: Path, to: str, out: Path, *, skip_model_check: bool = False,
           progress=None) -> ExportResult:
    """Write ``model`` with ``checkpoint``'s weights (or published weights by name, ``progress`` receiving their
    download's events) to ``out`` in the format ``to`` names (a checkpoint of another network refused unless
    ``skip_model_check``)."""
    if to not in TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    out = Path(out)
    if out.suffix.lower() != TARGETS[to]:
        raise UsageError(f"-o {out}: an {to} export is a {TARGETS[to]} file, e.g. -o model{TARGETS[to]}")
    atomic.check_file(out, "-o", example=f"model{TARGETS[to]}")
    from cnncli.exchange import onnx_model, torch_module

    # A missing extra is reported before any work.
    if to == "onnx":
        onnx_model.require()
    else:
        torch_module.require(torch_module.EXPORT)
    loaded = trained.load(model, checkpoint, data=None, skip_model_check=skip_model_check,
                          progress=progress)
    model_spec, graph, net = loaded.spec, loaded.graph, loaded.network
    meaning = {"cross_entropy": "logits (softmax is in the loss)",
               "yolo": "the raw yolo head, 5 numbers a box then the class scores, a cell each (decoding and "
                       "non-maximum suppression follow it: cnncli/engine/yolo.py, cnncli predict)"}.get(
        model_spec.loss, "the model's output")
    shapes = (("batch", *graph.input_shape), ("batch", *graph.output_shape))
    if to == "onnx":
        data = onnx_model.to_onnx(graph, net.params, net.buffers, model_spec.name).SerializeToString()
        _write(out, data)
        return ExportResult(model_spec.name, Path(checkpoint), to, out, len(data), None, onnx_model.INPUT,
                            shapes[0], onnx_model.OUTPUT, shapes[1], meaning, opset=onnx_model.OPSET,
                            head=loaded.head)
    weights = out.with_suffix(".pt")
    state = torch_module.state_dict(graph, net.params, net.buffers)
    source = torch_module.module_source(graph, model_spec.name, model_spec.source, weights.name)
    _write(weights, torch_module.save_state_dict(state, weights))
    _write(out, source.encode("utf-8"))
    return ExportResult(model_spec.name, Path(checkpoint), to, out, len(source), weights, "x", shapes[0],
                        "outputs", shapes[1], meaning, class_name=torch_module.class_name(model_spec.name),
                        head=loaded.head)


def _write(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, lambda f: f.write(data))
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
