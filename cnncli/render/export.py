"""Drawing ``cnncli export``: what was written and how to run it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from cnncli.commands.export import ExportResult
from cnncli.render import head_record, say, weights_head


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def show(result: ExportResult, fmt: str, console: Console) -> None:
    if fmt == "json":
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        record["head"] = head_record(result.head)
        console.print(json.dumps(record, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    size = f"{result.bytes / 1e6:.1f} MB" if result.bytes >= 1e6 else f"{result.bytes / 1e3:.0f} kB"
    if result.target == "onnx":
        lines = [
            f"wrote {result.path} ({size}): {result.model} with the weights of {result.checkpoint}, "
            f"ONNX opset {result.opset}, checked by onnx.checker",
            f"input '{result.input_name}' float32 {_shape(result.input_shape)}, prepared as the run prepared its "
            "images (its config.yaml: input adaptation, mean and std)",
            f"output '{result.output_name}' float32 {_shape(result.output_shape)}: {result.output_meaning}",
            "run it:",
        ]
        code = ["import onnxruntime",
                f"onnxruntime.InferenceSession('{result.path}').run(None, {{'{result.input_name}': x}})[0]"]
    else:
        lines = [
            f"wrote {result.path} (class {result.class_name}) and its weights {result.weights_path}: {result.model} "
            f"with the weights of {result.checkpoint}",
            f"inputs float32 {_shape(result.input_shape)} prepared as the run prepared its images; outputs "
            f"{_shape(result.output_shape)}: {result.output_meaning}",
            "use it:",
        ]
        code = ["import torch", f"from {result.path.stem} import {result.class_name}",
                f"model = {result.class_name}()",
                f"model.load_state_dict(torch.load('{result.weights_path}', weights_only=True))"]
    if result.head:
        lines.insert(1, weights_head(result.head))
    for line in lines:  # sentences: wrapped at the console's width
        say(console, line)
    for line in code:  # Python to copy: one statement a line, never broken by a wrap of ours
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
