"""Drawing ``cnncli summarize`` and ``cnncli models``: a Rich table, Markdown or JSON.

The records come from :mod:`cnncli.commands.summary`; nothing here computes a count.
JSON and Markdown are written with ``console.out`` so that no line is wrapped
or highlighted, whatever the terminal width.
"""

from __future__ import annotations

import json

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnncli.commands.summary import BYTES_PER_NUMBER
from cnncli.model.kinds import fmt_shape
from cnncli.render import say, tables

_FORMATS = ("table", "json", "markdown")
_INDENT = "  "


def _check(fmt: str) -> None:
    if fmt not in _FORMATS:
        from cnncli.errors import UsageError

        raise UsageError(f"--format must be one of {', '.join(_FORMATS)}, got {fmt!r}")


def si(n: float) -> str:
    """1_814_073_344 → '1.81 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


def _count(n: int) -> str:
    return f"{n:,}" if n else "–"


def _type(row) -> str:
    return f"{row.type} {row.detail}" if row.detail else row.type


def _params_cell(row) -> str:
    text = _count(row.params)
    return text + " (fixed)" if row.params and not row.trainable else text


def _strategy(s, row) -> str:
    """A conv layer's strategies under --paths: forward / backward where they differ, + the chain it heads."""
    path = s.paths.layers.get(row.name) if s.paths is not None else None
    if path is None:
        return ""
    text = path.forward if path.backward == path.forward else f"{path.forward} / {path.backward}"
    return text + (f" + {', '.join(path.chain)}" if path.chain else "")


def _title(s) -> str:
    return s.model + (f" — {s.description}" if s.description else "")


def footer_lines(s) -> list[tuple[str, str]]:
    """(label, value) pairs under the table, shared by the table and Markdown formats."""
    return [
        ("Input → output", f"{fmt_shape(s.input)} → {fmt_shape(s.output_shape)}"),
        ("Total params", f"{s.total_params:,}"),
        ("Trainable params", f"{s.trainable_params:,}"),
        ("Non-trainable params", f"{s.non_trainable_params:,}"),
        ("MACs", f"{s.macs:,} ({si(s.macs)})"),
        ("Params size", megabytes(s.param_bytes)),
        (f"Input size (batch {s.batch})", megabytes(s.input_bytes)),
        (f"Forward/backward size (batch {s.batch})", megabytes(s.activation_bytes)),
        ("Estimated total size", megabytes(s.total_bytes)),
    ]


def notes(s) -> list[str]:
    """What the numbers count, in words, under the totals."""
    out = []
    if s.input != s.model_input:
        out.append(f"Input {fmt_shape(s.input)} instead of the model's {fmt_shape(s.model_input)}.")
    params = "Params: learnable weights and biases, batch-norm scale and shift included"
    if s.buffers:
        params += f"; the {s.buffers:,} batch-norm running statistics are buffers, not params"
    out.append(params + ".")
    if s.non_trainable_params:
        out.append(f"{s.non_trainable_params:,} params are fixed (trainable: false).")
    out.append("MACs: multiply-accumulates of convolution and dense layers for one sample "
               "(torchvision's \"GFLOPS\").")
    out.append(f"Memory in float32 ({BYTES_PER_NUMBER} bytes, MB = 10⁶ bytes): params × {BYTES_PER_NUMBER}; "
               f"forward/backward = every layer's output kept for the backward pass plus its gradient, "
               f"× batch {s.batch}.")
    if s.aux_outputs:
        heads = ", ".join(f"{name} (×{w:g})" for name, w in s.aux_outputs.items())
        out.append(f"Auxiliary heads {heads}: training only, {s.aux_params:,} of the params and "
                   f"{s.aux_macs:,} of the MACs (marked aux); --no-aux leaves them out.")
    if s.paths is not None:
        p = s.paths
        sizes = sorted(set(p.parts), reverse=True)
        split = (f"in {len(p.parts)} parts of {' or '.join(map(str, sizes))} samples, one per core" if len(p.parts) > 1
                 else f"whole ({p.cores} core{'s' if p.cores > 1 else ''} usable)")
        blas = "exports" if p.cblas else "does not export"
        out.append(f"Strategy: what a fast network (train, eval, predict) runs each convolution by on this machine, "
                   f"in {p.dtype}, for a batch of {s.batch} {split}; forward / backward where they differ, + the "
                   f"layers a fused chain runs with it. This CPU has {p.vector_registers} vector registers and "
                   f"{p.lanes} {p.dtype} lanes; numpy's BLAS {blas} a CBLAS GEMM. The strategies are listed in "
                   f"the engine's map (cnncli/engine/__init__.py); backprop-trace and features run the plain "
                   f"reference convolution.")
    if s.reference:
        out.append(f"Reference: {s.reference}.")
    return out


def _layout(s, depth: int | None):
    """The rows to draw, with a header row (no counts) before each group shown unfolded."""
    shown: set[str] = set()
    for row in s.rows(depth):
        for group in row.groups:
            if group not in shown:
                shown.add(group)
                yield s.group_row(group), True
        yield row, False


def _relative(row) -> str:
    """A layer's name without the prefix of the block it is drawn under (``layer1.0.conv1`` → ``conv1``)."""
    if row.groups and row.name.startswith(row.groups[-1] + "."):
        return row.name[len(row.groups[-1]) + 1:]
    return row.name


def summary_table(s, depth: int | None = None, relative: bool = False) -> Table:
    """The layer table; ``relative``: names under a block without the block's prefix (narrow consoles)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Layer", no_wrap=True)
    table.add_column("Type")
    table.add_column("Output shape", no_wrap=True)
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    paths = s.paths is not None
    if paths:
        table.add_column("Strategy")
    for row, header in _layout(s, depth):
        style = "dim" if row.aux else None
        name = _INDENT * row.level + (_relative(row) if relative else row.name)
        extra = [_strategy(s, row)] if paths else []
        if header:
            table.add_row(Text(name, style="bold"), _type(row), fmt_shape(row.output_shape), "", "", *extra,
                          style=style)
        else:
            table.add_row(name, _type(row), fmt_shape(row.output_shape),
                          _params_cell(row), _count(row.macs), *extra, style=style)
    return table


def show_summary(summary, fmt: str, depth: int | None, console: Console) -> None:
    """Print one model's summary as a table, JSON or Markdown."""
    _check(fmt)
    if fmt == "json":
        console.out(json.dumps(summary.to_dict(depth), indent=2, ensure_ascii=False), highlight=False)
        return
    if fmt == "markdown":
        console.out(summary_markdown(summary, depth), highlight=False)
        return
    console.print(Text(_title(summary), style="bold"))
    table = summary_table(summary, depth)
    nested = [row for row, _ in _layout(summary, depth) if _relative(row) != row.name]
    if nested and not tables.fits(console, table):
        # Full dotted names (inception3a.branch2.0.conv) leave no room for the other columns; the indented
        # block rows above a layer already spell its prefix.
        table = summary_table(summary, depth, relative=True)
        example = max(nested, key=lambda row: min(row.level, 2))  # two levels down shows the rule best
        console.print(Text(f"Names under a block leave out its prefix: {example.name} is "
                           f"{_relative(example)} under {example.groups[-1]}.", style="dim"))
    console.print(table)
    grid = Table.grid(padding=(0, 3))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for label, value in footer_lines(summary):
        grid.add_row(label, value)
    console.print(grid)
    console.print()
    for line in notes(summary):
        console.print(Text(line, style="dim"))


def summary_markdown(s, depth: int | None = None) -> str:
    paths = s.paths is not None
    out = [f"## {_title(s)}", "", "| Layer | Type | Output shape | Params | MACs |" + (" Strategy |" if paths else ""),
           "|---|---|---|---:|---:|" + ("---|" if paths else "")]
    for row, header in _layout(s, depth):
        name = f"`{row.name}`" + (" (aux)" if row.aux else "")
        extra = f" {_strategy(s, row)} |" if paths else ""
        if header:
            out.append(f"| **{name}** | {_type(row)} | {fmt_shape(row.output_shape)} | | |{extra}")
        else:
            out.append(f"| {name} | {_type(row)} | {fmt_shape(row.output_shape)} | "
                       f"{_params_cell(row)} | {_count(row.macs)} |{extra}")
    out.append("")
    out += [f"| {label} | {value} |" if i else f"| {label} | {value} |\n|---|---:|"
            for i, (label, value) in enumerate(footer_lines(s))]
    out.append("")
    out += [f"- {line}" for line in notes(s)]
    return "\n".join(out)


# --- cnncli models --------------------------------------------------------------------

def show_models(infos, fmt: str, console: Console) -> None:
    """Print the built-in models: name, description, input size, parameters and MACs."""
    _check(fmt)
    if fmt == "json":
        console.out(json.dumps([i.to_dict() for i in infos], indent=2, ensure_ascii=False), highlight=False)
        return
    if fmt == "markdown":
        lines = ["| Model | Description | Input | Params | MACs |", "|---|---|---|---:|---:|"]
        lines += [f"| `{i.name}` | {i.description} | {fmt_shape(i.input)} | {i.params:,} | {si(i.macs)} |"
                  for i in infos]
        console.out("\n".join(lines), highlight=False)
        return
    table = Table(title="Built-in models (cnncli summarize NAME)", box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
    table.add_column("Model", no_wrap=True, style="bold")
    table.add_column("Description")
    table.add_column("Input", no_wrap=True)
    table.add_column("Params", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    for i in infos:
        mark = " *" if i.trainable_params != i.params else ""
        table.add_row(i.name, i.description, fmt_shape(i.input), f"{i.params:,}{mark}", si(i.macs))
    console.print(table)
    for i in infos:
        if i.trainable_params != i.params:
            console.print(Text(f"* {i.name}: {i.trainable_params:,} trainable, "
                               f"{i.params - i.trainable_params:,} fixed", style="dim"))
    console.print(Text("Params with auxiliary heads; MACs for one sample "
                       "(conv and dense multiply-accumulates).", style="dim"))
    published: dict[str, list[str]] = {}
    for i in infos:
        for name in i.weights:
            published.setdefault(name, []).append(i.name)
    for name, models in published.items():
        say(console, f"--weights {name} (published weights): {', '.join(models)}", "dim")
