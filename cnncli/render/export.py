"""Drawing ``cnncli export``: what was written and how to run it."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console

from cnncli.export import ExportResult


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def show(result: ExportResult, fmt: str, console: Console) -> None:
    if fmt == "json":
        record = {k: (str(v) if k in ("path", "checkpoint") else v) for k, v in asdict(result).items()}
        console.print(json.dumps(record, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    size = f"{result.bytes / 1e6:.1f} MB" if result.bytes >= 1e6 else f"{result.bytes / 1e3:.0f} kB"
    lines = [
        f"wrote {result.path} ({size}): {result.model} with the weights of {result.checkpoint}, "
        f"ONNX opset {result.opset}, checked by onnx.checker",
        f"input '{result.input_name}' float32 {_shape(result.input_shape)}, prepared as the run prepared its "
        "images (its config.yaml: input adaptation, mean and std)",
        f"output '{result.output_name}' float32 {_shape(result.output_shape)}: {result.output_meaning}",
        f"run it: onnxruntime.InferenceSession('{result.path}').run(None, {{'{result.input_name}': x}})[0]",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
