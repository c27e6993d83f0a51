"""Drawing ``cnncli backprop-trace``: the lecture's tables as Rich tables, or JSON.

The records come from :mod:`cnncli.lecture.trace`; nothing here computes a gradient.
Formulas are spelled from the records' index letters and symbols, and numbers
are substituted into them the way the slides write them (``-3.7064·0.1591·0.938``).
One drawing function per trace record type, in :data:`_VIEWS`.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any, Callable

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from cnncli.model.kinds import fmt_shape
from cnncli.render import say, tables
from cnncli.words import count

_FORMATS = ("table", "json")
_SIG = 5                 # significant digits of a number shown alone or inside a formula
_BAR = 16                # width of the gradient-norm bar of the network view
_MAX_STEP_ROWS = 21      # --steps N shows at most this many rows of the error table

# The activation after a dense layer: its name, its formula and its derivative, in the slides' words.
_ACTIVATIONS: dict[str | None, tuple[str, str, str]] = {
    "relu": ("ReLU", "max(0, {z})", "1 if {z} > 0, else 0"),
    "sigmoid": ("Sigmoid", "1/(1 + e^-{z})", "Sigmoid·(1 - Sigmoid)"),
    "tanh": ("tanh", "tanh({z})", "1 - tanh²"),
    "leaky_relu": ("LeakyReLU", "{z} if {z} > 0, else slope·{z}", "1 if {z} > 0, else slope"),
    "softmax": ("Softmax", "e^{z}/Σ_a e^{za}", "{o}·(1 - {o}) on the diagonal"),
    None: ("identity", "{z}", "1"),
}

# The error term of one output and its derivative, per loss.
_LOSSES: dict[str, tuple[str, str, Callable[[float, float], str]]] = {
    "bce": ("-(y·ln O + (1 - y)·ln(1 - O))", "-y/O + (1 - y)/(1 - O)",
            lambda y, o: f"-({_n(y)}·ln {_n(o)} + {_n(1 - y)}·ln(1 - {_n(o)}))"),
    "cross_entropy": ("-y·ln O", "-y/O", lambda y, o: f"-{_n(y)}·ln {_n(o)}"),
    "mse": ("½(O - y)²", "O - y", lambda y, o: f"½({_n(o)} - {_n(y)})²"),
}


def _check(fmt: str) -> None:
    if fmt not in _FORMATS:
        from cnncli.errors import UsageError

        raise UsageError(f"--format must be one of {', '.join(_FORMATS)}, got {fmt!r}")


# ------------------------------------------------------------------------------- numbers

def _n(v: float, sig: int = _SIG) -> str:
    """A number as the slides print it: a few significant digits, no exponent for ordinary sizes."""
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if 1e-4 <= abs(v) < 1e6:
        decimals = max(sig - 1 - math.floor(math.log10(abs(v))), 0)
        text = f"{v:.{decimals}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return "0" if text in ("-0", "") else text
    return f"{v:.{sig - 1}e}"


def _f(v: float) -> str:
    """A factor inside a product: negative ones in parentheses, as (-0.2)·X."""
    text = _n(v)
    return f"({text})" if text.startswith("-") else text


def _updated(new: float, change: float) -> str:
    """A new weight with enough decimals that the change lr·δW shows (0.10001035, not 0.1)."""
    if change == 0 or not math.isfinite(change):
        return _n(new)
    decimals = min(max(4, 3 - math.floor(math.log10(abs(change)))), 12)
    return f"{new:.{decimals}f}"


def _vector(values) -> str:
    return "[" + ", ".join(_n(v) for v in values) + "]"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _table(heading: str | None = None, console: Console | None = None, **kw) -> Table:
    """A table without markup surprises: its heading is printed above it as plain text."""
    if heading is not None and console is not None:
        _line(console, heading, "bold")
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, **kw)


def _col(table: Table, header: str, **kw) -> None:
    table.add_column(Text(header), **kw)


def _row(table: Table, *cells, **kw) -> None:
    table.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells), **kw)


def _print(console: Console, table: Table) -> None:
    """Print a table within the console's width; a wide one (many units) in blocks of columns."""
    tables.print_table(console, table)


def _line(console: Console, text: str, style: str | None = None) -> None:
    # Text, never markup: the slides' notation is full of square brackets.
    say(console, text, style or "")


def _note(console: Console, text: str) -> None:
    _line(console, text, "dim")


# --------------------------------------------------------------------------- worked view

def _names(t, n: int) -> tuple[str, str]:
    """How the slides name layer n's units and their index: ('h1', 'j'); the output layer is O."""
    layer = t.layers[n]
    return ("O" if n == len(t.layers) - 1 else layer.name), layer.cols


def _in_sym(t, n: int) -> str:
    """The name of layer n's input values: x_i, or the layer below's outputs h1out_j."""
    return "x" if n == 0 else f"{t.layers[n - 1].name}out"


def _decimals(changes) -> int:
    """Decimals that show the smallest non-zero change of a matrix (0.10001035, not 0.1)."""
    small = [abs(float(c)) for c in changes if c != 0 and math.isfinite(c)]
    if not small:
        return 4
    return min(max(4, 3 - math.floor(math.log10(min(small)))), 12)


def _forward(console: Console, t) -> None:
    console.rule(Text("Forward pass"), style="dim")
    for n, layer in enumerate(t.layers):
        own, c = _names(t, n)
        r = layer.rows
        x = _in_sym(t, n)
        act, formula, _ = _ACTIVATIONS.get(layer.activation, (layer.activation, "?", "?"))
        bias = f" + [b_{c}]" if layer.bias is not None else ""
        table = _table(f"{layer.name}: [{x}_{r}] × [W_{r}{c}]{bias} = [{own}in_{c}],   "
                       f"{own}out_{c} = {act}({own}in_{c})", console)
        _col(table, "", no_wrap=True)
        _col(table, f"{x}_{r}", justify="right", no_wrap=True)
        for col in range(layer.z.size):
            _col(table, f"{c}{col + 1}", justify="right", no_wrap=True)
        for row in range(layer.x.size):
            _row(table, f"{r}{row + 1}", _n(layer.x[row]), *(_n(w) for w in layer.weight[row]),
                 end_section=row == layer.x.size - 1)
        if layer.bias is not None:
            _row(table, f"b_{c}", "", *(_n(b) for b in layer.bias))
        _row(table, f"{own}in_{c}", "", *(_n(v) for v in layer.z))
        _row(table, f"{own}out_{c}", "", *(_n(v) for v in layer.out), style="bold")
        _print(console, table)
        for col in range(layer.z.size):
            terms = " + ".join(f"{_f(layer.x[row])}·{_f(layer.weight[row, col])}" for row in range(layer.x.size))
            if layer.bias is not None:
                terms += f" + {_f(layer.bias[col])}"
            _line(console, f"  {own}in{col + 1} = {terms} = {_n(layer.z[col])}")
        sub = formula.format(z=f"{own}in_{c}", za=f"{own}in_a", o=f"{own}out_{c}")
        _line(console, f"  {own}out_{c} = {sub} = {_vector(layer.out)}")
        console.print()


def _error(console: Console, t) -> None:
    console.rule(Text("Error"), style="dim")
    term, _, numbers = _LOSSES[t.loss_name]
    c = t.layers[-1].cols
    probabilities = t.loss_name != "cross_entropy" or t.output_kind == "softmax"
    table = _table(f"E = Σ_{c} E_{c},   E_{c} = {_indexed(term, c)}", console)
    _col(table, "", no_wrap=True)
    _col(table, f"y_{c}", justify="right")
    _col(table, f"Oout_{c}", justify="right")
    _col(table, f"E_{c}", no_wrap=True)
    _col(table, "", justify="right")
    for u, (y, o, e) in enumerate(zip(t.target, t.output, t.terms)):
        _row(table, f"{c}{u + 1}", _n(y), _n(o), numbers(y, o) if probabilities else "", _n(e))
    _print(console, table)
    _line(console, f"  E = {' + '.join(_f(e) for e in t.terms)} = {_n(t.loss)}", "bold")
    log = "ln is the natural logarithm. " if "ln" in term else ""
    _note(console, f"{log}The network averages the loss over the batch; with one sample that is the slides' "
                   "sum over the outputs.")
    console.print()


def _indexed(formula: str, c: str) -> str:
    """A loss formula in y and O, written for output c: y_l, Oout_l."""
    return formula.replace("y", f"y_{c}").replace("O", f"Oout_{c}")


def _sum_back(console: Console, t, n: int) -> None:
    """∂E/∂(layer n's output) = Σ over the layer above's units: the FC backward rule of slide 25."""
    above = t.layers[n + 1]
    own_above, c = _names(t, n + 1)
    own = t.layers[n].name
    r = above.rows
    table = _table(f"∂E/∂{own}out_{r} = Σ_{c} ∂E/∂{own_above}in_{c} · W_{r}{c}   (every {c} counts: slide 25's "
                   f"∂E/∂y_l-1 = ∂E/∂y_l · w_l)", console)
    _col(table, "", no_wrap=True)
    _col(table, "Σ terms")
    _col(table, f"∂E/∂{own}out_{r}", justify="right", no_wrap=True)
    for row in range(above.x.size):
        terms = " + ".join(f"{_f(above.grad_in[col])}·{_f(above.weight[row, col])}" for col in range(above.z.size))
        _row(table, f"{r}{row + 1}", terms, _n(above.grad_x[row]))
    _print(console, table)
    console.print()


def _factors(console: Console, t, n: int) -> None:
    layer = t.layers[n]
    own, c = _names(t, n)
    act, _, derivative = _ACTIVATIONS.get(layer.activation, (layer.activation, "?", "?"))
    if n == len(t.layers) - 1:
        _line(console, f"∂E/∂Oout_{c} = {_indexed(_LOSSES[t.loss_name][1], c)}")
        if t.loss_name == "cross_entropy" and layer.activation == "softmax":
            _note(console, f"The engine fuses softmax and cross-entropy and takes ∂E/∂Oin_{c} = Oout_{c}·Σy - y_{c} "
                           "directly; the factors below multiply out to the same numbers.")
    _line(console, f"∂{own}out_{c}/∂{own}in_{c}: {act}' = {derivative.format(z=f'{own}in_{c}', o=f'{own}out_{c}')}")
    if layer.elementwise:
        heading = f"∂E/∂{own}in_{c} = ∂E/∂{own}out_{c} · ∂{own}out_{c}/∂{own}in_{c}"
    else:
        heading = (f"∂E/∂{own}in_{c} = Σ_a ∂E/∂{own}out_a · ∂{own}out_a/∂{own}in_{c}   (the slides: only a = {c}, "
                   "the diagonal)")
    table = _table(heading, console)
    _col(table, "", no_wrap=True)
    _col(table, f"∂E/∂{own}out_{c}", justify="right")
    _col(table, f"∂{own}out_{c}/∂{own}in_{c}", justify="right")
    _col(table, f"∂E/∂{own}in_{c}", justify="right")
    if not layer.elementwise:
        _col(table, "diagonal only", justify="right")
    for u in range(layer.z.size):
        cells = [f"{c}{u + 1}", _n(layer.grad_out[u]), _n(layer.jacobian[u, u]), _n(layer.grad_in[u])]
        if not layer.elementwise:
            cells.append(_n(layer.diagonal_only[u]))
        _row(table, *cells)
    _print(console, table)
    if not layer.elementwise:
        jac = _table(f"The full {act} Jacobian ∂{own}out_a/∂{own}in_b = {own}out_a·(δ_ab - {own}out_b); "
                     "[ ] marks the diagonal, the only part the slides use", console)
        _col(jac, "a \\ b", no_wrap=True)
        for b in range(layer.z.size):
            _col(jac, f"{c}{b + 1}", justify="right", no_wrap=True)
        for a in range(layer.z.size):
            _row(jac, f"{c}{a + 1}", *(f"[{_n(v)}]" if a == b else _n(v) for b, v in enumerate(layer.jacobian[a])))
        _print(console, jac)
    _line(console, f"∂{own}in_{c}/∂W_{layer.rows}{c} = {_in_sym(t, n)}_{layer.rows} = {_vector(layer.x)}"
                   f"   (the same for every {c})")
    console.print()


def _delta_w(console: Console, t, n: int) -> None:
    layer = t.layers[n]
    own, c = _names(t, n)
    r = layer.rows
    x = _in_sym(t, n)
    if layer.elementwise:
        formula = f"∂E/∂{own}out_{c} · ∂{own}out_{c}/∂{own}in_{c} · {x}_{r}"
    else:
        formula = f"∂E/∂{own}in_{c} · {x}_{r}"
    table = _table(f"δW_{r}{c} = ∂E/∂W_{r}{c} = {formula}", console, show_lines=True)
    _col(table, "", no_wrap=True)
    for col in range(layer.z.size):
        _col(table, f"{c}{col + 1}", justify="right", no_wrap=True)
    for row in range(layer.x.size):
        cells = []
        for col in range(layer.z.size):
            if layer.elementwise:
                factors = f"{_f(layer.grad_out[col])}·{_f(layer.jacobian[col, col])}·{_f(layer.x[row])}"
            else:
                factors = f"{_f(layer.grad_in[col])}·{_f(layer.x[row])}"
            cells.append(f"{factors}\n= {_n(layer.grad_weight[row, col])}")
        _row(table, f"{r}{row + 1}", *cells)
    _print(console, table)
    if not layer.elementwise:
        _note(console, f"The slides multiply ∂E/∂{own}out_{c}·∂{own}out_{c}/∂{own}in_{c}·{x}_{r} (the "
                       f"diagonal-only column above); δW here uses the full Jacobian, as the engine does.")
    console.print()


def _new_w(console: Console, t, n: int) -> None:
    layer = t.layers[n]
    own, c = _names(t, n)
    r = layer.rows
    table = _table(f"Ŵ_{r}{c} = W_{r}{c} - lr·δW_{r}{c}   (lr = {_n(t.lr)})", console, show_lines=True)
    _col(table, "", no_wrap=True)
    for col in range(layer.z.size):
        _col(table, f"{c}{col + 1}", justify="right", no_wrap=True)
    places = _decimals((layer.new_weight - layer.weight).ravel())
    for row in range(layer.x.size):
        cells = []
        for col in range(layer.z.size):
            w, d, new = layer.weight[row, col], layer.grad_weight[row, col], layer.new_weight[row, col]
            cells.append(f"{_n(w)} - {_n(t.lr)}·{_f(d)}\n= {new:.{places}f}")
        _row(table, f"{r}{row + 1}", *cells)
    _print(console, table)
    if layer.bias is not None:
        places = _decimals(layer.new_bias - layer.bias)
        news = ", ".join(f"{b:.{places}f}" for b in layer.new_bias)
        _line(console, f"Biases: ∂E/∂b_{c} = ∂E/∂{own}in_{c} = {_vector(layer.grad_bias)}. The slides keep "
                       f"b_{c} at {_vector(layer.bias)}; this step updates it like any parameter: [{news}]")
    console.print()


def _backward(console: Console, t) -> None:
    console.rule(Text("Backward pass, from the output back"), style="dim")
    for n in reversed(range(len(t.layers))):
        layer = t.layers[n]
        below = "the input x" if n == 0 else t.layers[n - 1].name
        console.print()
        _line(console, f"Layer {layer.name}: W_{layer.rows}{layer.cols}, from {below} to {_names(t, n)[0]}",
              "bold underline")
        if n < len(t.layers) - 1:
            _sum_back(console, t, n)
        _factors(console, t, n)
        _delta_w(console, t, n)
        _new_w(console, t, n)


def _steps(console: Console, t) -> None:
    steps = t.steps
    if len(steps) > _MAX_STEP_ROWS:
        pick = sorted({round(i * (len(steps) - 1) / (_MAX_STEP_ROWS - 1)) for i in range(_MAX_STEP_ROWS)})
        steps = [steps[i] for i in pick]
    table = _table(f"The error falling: plain SGD, lr {_n(t.lr)}, on this one sample", console)
    _col(table, "after step", justify="right", no_wrap=True)
    _col(table, "E", justify="right", no_wrap=True)
    _col(table, "change", justify="right", no_wrap=True)
    first = t.steps[0].loss
    for s in steps:
        _row(table, str(s.step), _n(s.loss, 7), "" if s.step == 0 else _n(s.loss - first, 4))
    _print(console, table)


def _bullet(console: Console, text: str, indent: int = 2) -> None:
    """A bullet whose wrapped lines hang under its text, not under the bullet."""
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column()
    grid.add_row(Text(" " * indent + "• "), Text(text))
    console.print(grid)


def _slides(console: Console, t) -> None:
    console.rule(Text("The lecture's numbers (slides 5–24)"), style="dim")
    _line(console, "Every printed number beside its step-local recomputation (from the numbers the slide itself "
                   "used) and the exact value of the whole computation; under a slip, why it is one", "bold")
    header = ("slide", "quantity", "printed", "step-local", "exact", "")
    rows = [(str(c.slide), c.step, c.printed, _n(c.recomputed, 6), _n(c.exact, 6), "ok" if c.match else "SLIP")
            for c in t.slides]
    widths = [max(cell_len(cell) for cell in column) for column in zip(header, *rows)]
    # The reasons are long sentences: each is stacked under its row, where it may take the console's whole
    # width, instead of a column that would make every row as wide. Runs of rows between two reasons are
    # tables of the same fixed column widths, so that they line up as one.
    indent = widths[0] + 3  # under the quantity: the slide column and the gap between two columns
    run: list[tuple] = []

    def flush(first: bool) -> None:
        table = _table(show_header=first)
        for name, w in zip(header, widths):
            _col(table, name, justify="left" if name in ("quantity", "") else "right", no_wrap=True, width=w)
        for cells in run:
            flag = Text(cells[-1], style="" if cells[-1] == "ok" else "bold red")
            _row(table, *cells[:-1], flag)
        console.print(table)
        run.clear()

    first = True
    for c, cells in zip(t.slides, rows):
        run.append(cells)
        if not c.match and c.reason:
            flush(first)
            first = False
            console.print(Padding(Text(c.reason, style="dim"), (0, 0, 0, indent)))
    if run or first:
        flush(first)
    bad = sum(not c.match for c in t.slides)
    _line(console, f"{bad} of {len(t.slides)} printed numbers disagree with their step-local recomputation "
                   "beyond the precision they are printed to.")
    console.print()
    _line(console, "The lecture's slips", "bold")
    for line in t.slips:
        _bullet(console, line)
    if t.slide_notes:
        _line(console, "In the formulas", "bold")
        for line in t.slide_notes:
            _bullet(console, line)


def _show_worked(t, console: Console) -> None:
    y = ", ".join(_n(v) for v in t.target)
    _line(console, f"Backpropagation trace: {t.model} — input {_vector(t.x)} ({t.input_source}), "
                   f"target [{y}], loss {t.loss_name}, lr {_n(t.lr)}", "bold")
    console.print()
    _forward(console, t)
    _error(console, t)
    _backward(console, t)
    _steps(console, t)
    if t.slides is not None:
        console.print()
        _slides(console, t)
    _dump_note(console, t)


def _dump_note(console: Console, t) -> None:
    if t.dump:
        _note(console, f"Gradients written to {t.dump} (parameter names as in a checkpoint; "
                       "act_grad.<node> for every node's ∂E/∂output).")


# ----------------------------------------------------------------------- conv and pooling

def _grid(title: str, values) -> Table:
    table = Table(title=Text(title), box=box.SQUARE, show_header=False)
    for _ in range(values.shape[1]):
        table.add_column(justify="right", no_wrap=True)
    for r in range(values.shape[0]):
        _row(table, *(_n(v) for v in values[r]))
    return table


def _grids(console: Console, *grids: Table) -> None:
    row = Table.grid(padding=(0, 4))
    for _ in grids:
        row.add_column(vertical="top")
    row.add_row(*grids)
    console.print(row)


def _written(console: Console, s) -> None:
    symbolic = " + ".join(f"{p.a}·{p.b}" for p in s.terms)
    numbers = " + ".join(f"{_f(p.va)}·{_f(p.vb)}" for p in s.terms)
    _line(console, f"  {s.lhs} = {symbolic}")
    _line(console, f"  {' ' * len(s.lhs)} = {numbers} = {_n(s.value)}")


def _show_conv(t, console: Console) -> None:
    kh, kw = t.filter.shape
    _line(console, f"Convolution (slides 26–27): a {kh}×{kw} filter F slid over a {t.x.shape[0]}×{t.x.shape[1]} "
                   f"input X gives O (stride 1, no padding, no bias)", "bold")
    _grids(console, _grid("X", t.x), _grid("F", t.filter), _grid("O", t.output))
    console.rule(Text("Forward: O_pq = Σ_ab F_ab·X_(p+a)(q+b)"), style="dim")
    for s in t.forward:
        _written(console, s)
    console.print()
    console.rule(Text("∂E/∂F_ab = Σ_pq ∂E/∂O_pq·∂O_pq/∂F_ab = Σ_pq ∂E/∂O_pq·X_(p+a)(q+b)"), style="dim")
    _grids(console, _grid("∂E/∂O (given)", t.upstream))
    for s in t.filter_sums:
        _written(console, s)
    console.print()
    console.rule(Text("∂E/∂X_rc = Σ ∂E/∂O_pq·F_(r-p)(c-q), over the outputs that read X_rc"), style="dim")
    for s in t.input_sums:
        _written(console, s)
    _grids(console, _grid("∂E/∂F", t.grad_filter), _grid("∂E/∂X", t.grad_input))
    _note(console, "∂E/∂X is the full convolution of ∂E/∂O with the filter turned by 180°. "
                   "Every value is the engine's (a conv node with bias off); the sums spell its index structure.")
    _dump_note(console, t)


def _share(share: float, out: str) -> str:
    frac = Fraction(float(share)).limit_denominator(1000)
    if frac == 1:
        return f"∂E/∂{out}"
    text = f"{frac.numerator}/{frac.denominator}" if frac.denominator != 1 else str(frac.numerator)
    return f"{text}·∂E/∂{out}"


def _show_pool(t, console: Console) -> None:
    from cnncli.lecture.trace import sym

    kind = "Max" if t.kind == "max" else "Average"
    kh, kw = t.kernel
    _line(console, f"{kind} pooling (slide 28): {kh}×{kw} windows, stride {t.stride[0]}, over a "
                   f"{t.x.shape[0]}×{t.x.shape[1]} input", "bold")
    _grids(console, _grid("X", t.x), _grid("O", t.output), _grid("∂E/∂O (given)", t.upstream))
    console.rule(Text("Forward"), style="dim")
    oh, ow = t.output.shape
    for (p, q), cells in zip(((p, q) for p in range(oh) for q in range(ow)), t.windows):
        names = ", ".join(sym("X", r, c) for r, c in cells)
        values = ", ".join(_n(t.x[r, c]) for r, c in cells)
        if t.kind == "max":
            _line(console, f"  {sym('O', p, q)} = max({names}) = max({values}) = {_n(t.output[p, q])}")
        else:
            plus_n = " + ".join(sym("X", r, c) for r, c in cells)
            plus_v = " + ".join(_f(t.x[r, c]) for r, c in cells)
            _line(console, f"  {sym('O', p, q)} = ({plus_n})/{len(cells)} = ({plus_v})/{len(cells)} = "
                           f"{_n(t.output[p, q])}")
    console.print()
    if t.kind == "max":
        rule = ("∂E/∂X = ∂E/∂O for the cell that is its window's maximum, 0 for the others "
                "(a tie goes to the first in row order)")
    else:
        rule = f"∂E/∂X = ∂E/∂O/(p·q) = ∂E/∂O/{kh * kw} for every cell of the window"
    console.rule(Text("Backward"), style="dim")
    _line(console, rule)
    _line(console, "∂E/∂X: the share of each output's gradient that every input cell receives", "bold")
    table = Table(box=box.SQUARE, show_lines=True)
    _col(table, "", no_wrap=True)
    for c in range(t.x.shape[1]):
        _col(table, f"col {c + 1}", justify="center", no_wrap=True)
    for r in range(t.x.shape[0]):
        cells = []
        for c in range(t.x.shape[1]):
            parts = [_share(t.shares[p, q, r, c], sym("O", p, q)) for p in range(oh) for q in range(ow)
                     if t.shares[p, q, r, c] != 0]
            cells.append(f"{' + '.join(parts)}\n= {_n(t.grad_input[r, c])}" if parts else "0")
        _row(table, f"row {r + 1}", *cells)
    _print(console, table)
    _note(console, "Shares are the engine's: its pooling backward pass run once per output with ∂E/∂O = 1 there.")
    _dump_note(console, t)


# --------------------------------------------------------------------------- network view

def _bar(value: float | None, lo: float, hi: float) -> str:
    if value is None or value <= 0:
        return "·"
    span = hi - lo
    frac = 1.0 if span <= 0 else (math.log10(value) - lo) / span
    eighths = max(1, round(frac * _BAR * 8))
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def _maybe(v: float | None, fmt: Callable[[float], str] = _n) -> str:
    return "–" if v is None else fmt(v)


def _show_network(t, console: Console, heading: bool = True) -> None:
    if heading:
        _line(console, f"Backpropagation trace: {t.model} — {fmt_shape(t.input_shape)} {t.input_source}, "
                       f"target {t.target}, loss {t.loss_name}, lr {_n(t.lr)}", "bold")
        _line(console, f"E = {_n(t.loss)}; the network predicts class {t.predicted}")
    logs = [math.log10(r.grad_norm) for r in t.layers if r.grad_norm]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    # Two cells between columns, not three: GoogLeNet's names and kinds then fit two blocks of 80 columns.
    table = _table("Per layer, from the output back to the input (float64, one sample)", console,
                   padding=(0, 1, 0, 0))
    _col(table, "layer", no_wrap=True)
    _col(table, "kind", no_wrap=True)
    _col(table, "output", no_wrap=True)
    _col(table, "mean", justify="right", no_wrap=True)
    _col(table, "std", justify="right", no_wrap=True)
    _col(table, "dead", justify="right", no_wrap=True)
    _col(table, "‖∂E/∂a‖", justify="right", no_wrap=True)
    _col(table, "‖∂E/∂W‖", justify="right", no_wrap=True)
    _col(table, "update ratio", justify="right")
    _col(table, f"‖∂E/∂a‖ 1e{math.floor(lo)}…1e{math.ceil(hi)}", no_wrap=True)
    for r in t.layers:
        _row(table, r.name, r.kind, fmt_shape(r.shape), _n(r.mean, 3), _n(r.std, 3),
             _maybe(r.dead, lambda v: f"{v:.0%}"), _maybe(r.grad_norm, lambda v: _n(v, 3)),
             _maybe(r.weight_grad_norm, lambda v: _n(v, 3)), _maybe(r.update_ratio, lambda v: _n(v, 2)),
             _bar(r.grad_norm, lo, hi))
    # Too wide for the console: the activations (kind … std), then the gradients (dead … bar), each beside
    # the names.
    tables.print_table(console, table, groups=(4, 5))
    _note(console, "a: the layer's output. dead: ReLU outputs that are 0, through which no gradient passes. "
                   "update ratio: lr·‖∂E/∂W‖/‖W‖, how far one step moves the weights. "
                   "–: no gradient is taken there (a final softmax is fused into the cross-entropy). "
                   "The bar is ‖∂E/∂a‖ on a log scale: a gradient that shrinks by orders of magnitude "
                   "towards the input is vanishing (compare vgg16 with resnet18).")
    if t.train_mode_layers:
        how = {"batchnorm": "batch norm normalises with this sample's statistics",
               "dropout": "dropout drops units (seeded)"}
        _note(console, "A training pass, as a training step takes it: "
                       + "; ".join(how.get(k, k) for k in t.train_mode_layers) + ".")
    console.print()
    _steps(console, t)
    _dump_note(console, t)


def _show_detection(t, console: Console) -> None:
    n = t.network
    _line(console, f"Backpropagation trace: {n.model} — {fmt_shape(n.input_shape)} {n.input_source}, "
                   f"loss {n.loss_name}, lr {_n(n.lr)}", "bold")
    terms = " + ".join(f"{k} {_n(v, 4)}" for k, v in t.terms.items())
    _line(console, f"E = {terms} = {_n(n.loss)}")
    if t.located is not None:
        o = t.located
        _line(console, f"object {o.name} {_box(o.truth)}; predicted {o.predicted_name} ({o.probability:.2f}) "
                       f"{_box(o.predicted)}, IoU {o.iou:.2f}")
        _note(console, "A localizer finds one object an image: cls is the cross-entropy of its class scores, box "
                       "the squared error of its box's centre and size (as fractions of the input).")
        console.print()
        _show_network(n, console, heading=False)
        return
    _note(console, f"A {t.grid[0]}×{t.grid[1]} grid, {t.boxes} boxes a cell: an object belongs to the cell holding "
                   "its centre, and the cell's box whose prediction overlaps it most (highest IoU) answers for it: "
                   "coord is that box's error in x, y, √w, √h; obj its objectness p against its target ĉ (the IoU); "
                   "noobj the objectness of every other box; cls the cell's class scores (cross-entropy).")
    table = _table("Each object and the box responsible for it (boxes in input pixels x0, y0, x1, y1)", console,
                   padding=(0, 1, 0, 0))
    for header in ("class", "cell", "box", "object", "predicted", "IoU", "p", "ĉ", "coord", "obj"):
        _col(table, header, justify="left" if header in ("class", "object", "predicted") else "right", no_wrap=True)
    for o in t.objects:
        _row(table, o.name, f"{o.cell[0]},{o.cell[1]}", str(o.box), _box(o.truth), _box(o.predicted),
             f"{o.iou:.2f}", f"{o.p:.2f}", f"{o.c_hat:.2f}", _n(o.coord, 3), _n(o.obj, 3))
    _print(console, table)
    if t.dropped:
        _note(console, f"{count(t.dropped, 'object')} found no box left in its cell and cost nothing (a cell answers "
                       f"for at most {t.boxes} objects)")
    _note(console, f"The other {count(t.idle_boxes, 'box')} answer for nothing: their objectness is pushed "
                   f"towards 0 (noobj {_n(t.terms['noobj'], 3)}; the highest of them is {t.idle_max_p:.2f}).")
    console.print()
    _show_network(n, console, heading=False)


def _box(b) -> str:
    return "[" + ",".join(f"{v:.0f}" for v in b) + "]"


# ------------------------------------------------------------------------------ dispatch

_VIEWS: dict[str, Callable[[Any, Console], None]] = {
    "worked": _show_worked,
    "conv": _show_conv,
    "maxpool": _show_pool,
    "avgpool": _show_pool,
    "network": _show_network,
    "detection": _show_detection,
}


def show(result, fmt: str, console: Console) -> None:
    """Print a trace record from :func:`cnncli.lecture.trace.run` as tables or JSON."""
    _check(fmt)
    if fmt == "json":
        console.out(json.dumps(_json_safe(result.to_dict()), indent=2, ensure_ascii=False), highlight=False)
        return
    _VIEWS[result.mode](result, console)
