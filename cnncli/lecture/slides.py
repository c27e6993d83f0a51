"""The lecture's hand-worked training step, transcribed and checked step by step.

Slides 5-24 of the lecture work one gradient step of a 3-3-3-3 network by hand
(ReLU -> Sigmoid -> Softmax, per-output binary cross-entropy, lr 0.01).
``slides.yaml`` holds every number they print; this module re-does each printed
step with the correct mathematics *applied to the numbers the slide itself used*
("step-local"), so that a slip is reported on the slide where it happens rather
than in every value downstream of it. The exact values of the whole computation
come from the engine (the caller passes them to :func:`compare`); this module
never runs a network.

Public API::

    data   = load_slides()                      # SlideData: given inputs + records
    local  = recompute_step_local(data)         # {record index: step-local value}
    checks = compare(data, exact)               # [SlideCheck], one per record
    lines  = slips(checks)                      # short human summary

numpy + pyyaml + stdlib only: the CLI and rendering layers import this, not the
other way round.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import yaml

__all__ = [
    "GivenInputs",
    "SlideRecord",
    "SlideData",
    "SlideCheck",
    "load_slides",
    "recompute_step_local",
    "compare",
    "slips",
]

_ROLES = ("result", "operand", "recap")
_ID = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)(?:,(\d+))?\])?$")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GivenInputs:
    """The example's data: exact by definition, so never checked, never rounded."""

    x: np.ndarray
    y: np.ndarray
    W_ij: np.ndarray
    W_jk: np.ndarray
    W_kl: np.ndarray
    b_j: np.ndarray
    b_k: np.ndarray
    b_l: np.ndarray
    lr: float
    printed_on: Mapping[str, tuple[int, ...]]

    def value(self, key: str) -> float:
        """Look a given up by key, e.g. ``"x[2]"``, ``"W_kl[1,3]"``, ``"lr"`` (1-based)."""
        name, idx = _parse_id(key)
        if name == "lr" and not idx:
            return float(self.lr)
        arr = getattr(self, name, None)
        if not isinstance(arr, np.ndarray) or len(idx) != arr.ndim:
            raise KeyError(key)
        return float(arr[tuple(i - 1 for i in idx)])

    def has(self, key: str) -> bool:
        try:
            self.value(key)
        except (KeyError, IndexError, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SlideRecord:
    """One number as printed on one slide.

    ``role`` is ``"result"`` when the slide computes it, ``"operand"`` when an earlier
    result is printed again inside an expression, ``"recap"`` for slide 24's summary.
    ``value`` stays a string: its trailing digits are the only record of the
    precision the slide claims.
    """

    id: str
    slide: int
    value: str
    what: str
    role: str = "result"
    times: int = 1

    @property
    def number(self) -> float:
        return float(self.value.replace(",", "."))

    @property
    def decimals(self) -> int:
        return _decimals(self.value)

    @property
    def half_unit(self) -> float:
        """Half a unit in the last printed digit: what printing alone may hide."""
        return 0.5 * 10.0 ** (-self.decimals)

    @property
    def family(self) -> str:
        return _parse_id(self.id)[0]

    @property
    def index(self) -> tuple[int, ...]:
        return _parse_id(self.id)[1]


@dataclass(frozen=True)
class SlideData:
    """Given inputs, the printed records in reading order, and formula-text notes."""

    given: GivenInputs
    records: tuple[SlideRecord, ...]
    notes: tuple[str, ...] = ()

    def ids(self) -> set[str]:
        return {r.id for r in self.records}

    def find(self, id: str, slide: int | None = None, role: str | None = None) -> list[int]:
        """Indices of the records with this id (optionally on one slide / in one role)."""
        return [
            n
            for n, r in enumerate(self.records)
            if r.id == id and (slide is None or r.slide == slide) and (role is None or r.role == role)
        ]


@dataclass(frozen=True)
class SlideCheck:
    """One printed number judged against its step-local recomputation.

    ``reason`` is ``""`` on a match, otherwise ``"<class>: <what went wrong> — <numbers>"``
    where class is one of ``formula slip``, ``sign``, ``misplaced digit``,
    ``wrong method``, ``rounding carried``, ``rounding``.
    """

    step: str
    slide: int
    printed: str
    slide_value: float
    recomputed: float
    exact: float
    match: bool
    reason: str


def load_slides() -> SlideData:
    """Read ``cnncli/lecture/slides.yaml`` from the installed package."""
    text = resources.files("cnncli.lecture").joinpath("slides.yaml").read_text(encoding="utf-8")
    return _parse_yaml(yaml.safe_load(text))


def _parse_yaml(doc: Mapping) -> SlideData:
    g = doc["given"]
    arr = lambda key: np.asarray(g[key], dtype=np.float64)  # noqa: E731
    given = GivenInputs(
        x=arr("x"),
        y=arr("y"),
        W_ij=arr("W_ij"),
        W_jk=arr("W_jk"),
        W_kl=arr("W_kl"),
        b_j=arr("b_j"),
        b_k=arr("b_k"),
        b_l=arr("b_l"),
        lr=float(g["lr"]),
        printed_on={k: tuple(v) for k, v in g.get("printed_on", {}).items()},
    )
    records = []
    for raw in doc["records"]:
        # The precision lives in the string; a bare YAML float would lose "0.2040".
        if not isinstance(raw["value"], str):
            raise ValueError(f"record {raw['id']} on slide {raw['slide']}: value must be a quoted string")
        rec = SlideRecord(
            id=str(raw["id"]),
            slide=int(raw["slide"]),
            value=raw["value"],
            what=str(raw["what"]),
            role=str(raw.get("role", "result")),
            times=int(raw.get("times", 1)),
        )
        if rec.role not in _ROLES:
            raise ValueError(f"record {rec.id} on slide {rec.slide}: unknown role {rec.role!r}")
        _parse_id(rec.id)
        records.append(rec)
    return SlideData(given=given, records=tuple(records), notes=tuple(doc.get("notes", ())))


def _parse_id(key: str) -> tuple[str, tuple[int, ...]]:
    m = _ID.match(key)
    if not m:
        raise ValueError(f"malformed id {key!r}")
    return m.group(1), tuple(int(g) for g in m.groups()[1:] if g is not None)


def _decimals(text: str) -> int:
    text = text.replace(",", ".")
    return len(text.split(".", 1)[1]) if "." in text else 0


# ------------------------------------------------------------------- step formulas

Values = Mapping[str, float]


@dataclass(frozen=True)
class _Formula:
    """A function of printed (or given) values, named by id.

    ``text`` renders the computation with the printed strings: ``⟨id⟩`` placeholders.
    """

    inputs: tuple[str, ...]
    fn: Callable[[Values], float]
    text: str


@dataclass(frozen=True)
class _Alternative:
    """A known way of getting it wrong, tested against a mismatching printed value."""

    cls: str
    summary: str
    formula: _Formula


@dataclass(frozen=True)
class _Step:
    correct: _Formula
    alternatives: tuple[_Alternative, ...] = ()


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _dE_do(o: float, y: float) -> float:
    # d/do of -(y ln o + (1-y) ln(1-o)); the second term's minus is the one slide 10 drops.
    return -y / o + (1.0 - y) / (1.0 - o)


def _dE_dz(v: Values, l: int) -> float:
    """∂E/∂o_in[l] through the full softmax Jacobian, from the printed o_out and y."""
    o = [v[f"o_out[{a}]"] for a in (1, 2, 3)]
    y = [v[f"y[{a}]"] for a in (1, 2, 3)]
    g = [_dE_do(o[a], y[a]) for a in range(3)]
    # Σ_a ∂E/∂o_a · o_a(δ_al - o_l)  =  o_l · (∂E/∂o_l - Σ_a ∂E/∂o_a·o_a)
    return o[l - 1] * (g[l - 1] - sum(g[a] * o[a] for a in range(3)))


_OUT_GRAD_INPUTS = tuple(f"o_out[{a}]" for a in (1, 2, 3)) + tuple(f"y[{a}]" for a in (1, 2, 3))

_FACTOR_NAMES = {
    "dE_dout": "∂E{}/∂Oout{}",
    "dout_din": "∂Oout{}/∂Oin{}",
    "h2_out": "h2out{}",
    "h1_out": "h1out{}",
    "dE_dh2out": "∂E/∂h2out{}",
    "dh2out_dh2in": "∂h2out{}/∂h2in{}",
    "dE_dh1out": "∂E/∂h1out{}",
    "dh1out_dh1in": "∂h1out{}/∂h1in{}",
    "x": "x{}",
    "W_kl": "W_kl{}",
}


def _factor_name(key: str) -> str:
    name, idx = _parse_id(key)
    pattern = _FACTOR_NAMES.get(name, name + "{}")
    if pattern.count("{}") == 2:
        return pattern.format(idx[0], idx[0])
    return pattern.format("".join(map(str, idx)))


def _product(keys: Sequence[str]) -> _Formula:
    keys = tuple(keys)
    return _Formula(keys, lambda v: math.prod(v[k] for k in keys), "·".join(f"⟨{k}⟩" for k in keys))


def _repeated_factor(keys: Sequence[str]) -> tuple[_Alternative, ...]:
    """A factor of a printed product multiplied in twice (seen on slide 12, column 2)."""
    out = []
    for k in dict.fromkeys(keys):
        f = _product(tuple(keys) + (k,))
        out.append(_Alternative("formula slip", f"{_factor_name(k)} multiplied in twice", f))
    return tuple(out)


def _update(w: str, d: str) -> _Step:
    correct = _Formula((w, "lr", d), lambda v: v[w] - v["lr"] * v[d], f"⟨{w}⟩ - ⟨lr⟩·⟨{d}⟩")
    added = _Formula((w, "lr", d), lambda v: v[w] + v["lr"] * v[d], f"⟨{w}⟩ + ⟨lr⟩·⟨{d}⟩")
    alts = [_Alternative("sign", "adds lr·δW instead of subtracting it", added)]
    # Writing 0.01·δW out by hand is where a 0 goes astray (slides 13 and 19).
    for shift, where in ((-1, "low"), (1, "high")):
        f = _Formula(
            (w, "lr", d),
            lambda v, s=shift: v[w] - v["lr"] * v[d] * 10.0**s,
            f"⟨{w}⟩ - ⟨lr⟩·⟨{d}⟩·10^{shift}",
        )
        alts.append(_Alternative("misplaced digit", f"lr·δW added one decimal place too {where}", f))
    return _Step(correct, tuple(alts))


def _dense(act: str, w: str, b: str, n: int) -> _Step:
    keys = tuple(f"{act}[{a}]" for a in (1, 2, 3))
    ws = tuple(f"{w}[{a},{n}]" for a in (1, 2, 3))
    bias = f"{b}[{n}]"
    fn = lambda v: sum(v[a] * v[c] for a, c in zip(keys, ws)) + v[bias]  # noqa: E731
    text = " + ".join(f"⟨{a}⟩·⟨{c}⟩" for a, c in zip(keys, ws)) + f" + ⟨{bias}⟩"
    return _Step(_Formula(keys + ws + (bias,), fn, text))


def _step_for(key: str) -> _Step:
    """The correct computation of one printed quantity, plus its known wrong variants."""
    name, idx = _parse_id(key)
    if name == "h1_in":
        return _dense("x", "W_ij", "b_j", idx[0])
    if name == "h1_out":
        src = f"h1_in[{idx[0]}]"
        return _Step(_Formula((src,), lambda v: max(0.0, v[src]), f"ReLU(⟨{src}⟩)"))
    if name == "h2_in":
        return _dense("h1_out", "W_jk", "b_k", idx[0])
    if name == "h2_out":
        src = f"h2_in[{idx[0]}]"
        return _Step(_Formula((src,), lambda v: _sigmoid(v[src]), f"Sigmoid(⟨{src}⟩)"))
    if name == "o_in":
        return _dense("h2_out", "W_kl", "b_l", idx[0])
    if name == "o_out":
        l = idx[0]
        zs = tuple(f"o_in[{a}]" for a in (1, 2, 3))
        soft = _Formula(
            zs,
            lambda v: math.exp(v[zs[l - 1]]) / sum(math.exp(v[z]) for z in zs),
            f"e^⟨{zs[l - 1]}⟩/Σ_a e^Oin_a",
        )
        linear = _Formula(
            zs,
            lambda v: v[zs[l - 1]] / sum(v[z] for z in zs),
            f"⟨{zs[l - 1]}⟩/(⟨o_in[1]⟩+⟨o_in[2]⟩+⟨o_in[3]⟩)",
        )
        summary = "normalises Oin by its sum instead of exponentiating (not a softmax)"
        return _Step(soft, (_Alternative("wrong method", summary, linear),))
    if name == "one_minus_o_out":
        src = f"o_out[{idx[0]}]"
        return _Step(_Formula((src,), lambda v: 1.0 - v[src], f"1 - ⟨{src}⟩"))
    if name == "E_term":
        l = idx[0]
        o, y = f"o_out[{l}]", f"y[{l}]"

        def term(log: Callable[[float], float]) -> Callable[[Values], float]:
            # A zero-weight term is absent from the slide's sum; skipping it keeps 0·log 0 from being NaN.
            def f(v: Values) -> float:
                pos = v[y] * log(v[o]) if v[y] != 0 else 0.0
                neg = (1 - v[y]) * log(1 - v[o]) if v[y] != 1 else 0.0
                return -(pos + neg)

            return f

        ln = _Formula((o, y), term(math.log), f"-(⟨{y}⟩·ln ⟨{o}⟩ + (1-⟨{y}⟩)·ln(1-⟨{o}⟩))")
        lg = _Formula((o, y), term(math.log10), f"-(⟨{y}⟩·log10 ⟨{o}⟩ + (1-⟨{y}⟩)·log10(1-⟨{o}⟩))")
        return _Step(ln, (_Alternative("wrong method", "log10 instead of the natural log", lg),))
    if name == "E":
        keys = tuple(f"E_term[{a}]" for a in (1, 2, 3))
        return _Step(_Formula(keys, lambda v: sum(v[k] for k in keys), " + ".join(f"⟨{k}⟩" for k in keys)))
    if name == "dE_dout":
        l = idx[0]
        o, y = f"o_out[{l}]", f"y[{l}]"
        correct = _Formula((o, y), lambda v: _dE_do(v[o], v[y]), f"-⟨{y}⟩/⟨{o}⟩ + (1-⟨{y}⟩)/(1-⟨{o}⟩)")
        return _Step(correct)
    if name == "dout_din":
        l = idx[0]
        zs = tuple(f"o_in[{a}]" for a in (1, 2, 3))

        def diag(a: int, b: int) -> Callable[[Values], float]:
            def f(v: Values) -> float:
                e = [math.exp(v[z]) for z in zs]
                return e[l - 1] * (e[a - 1] + e[b - 1]) / sum(e) ** 2

            return f

        others = [a for a in (1, 2, 3) if a != l]
        correct = _Formula(
            zs,
            diag(*others),
            f"e^Oin{l}·(e^Oin{others[0]}+e^Oin{others[1]})/(Σe^Oin)² at Oin = ⟨o_in[1]⟩, ⟨o_in[2]⟩, ⟨o_in[3]⟩",
        )
        alts = []
        for a, b in ((1, 2), (1, 3), (2, 3), (1, 1), (2, 2), (3, 3)):
            if (a, b) == tuple(others):
                continue
            alts.append(
                _Alternative(
                    "formula slip",
                    f"e^Oin{a}+e^Oin{b} in the bracket instead of e^Oin{others[0]}+e^Oin{others[1]}",
                    _Formula(zs, diag(a, b), f"e^Oin{l}·(e^Oin{a}+e^Oin{b})/(Σe^Oin)²"),
                )
            )
        return _Step(correct, tuple(alts))
    if name == "dW_kl":
        k, l = idx
        h = f"h2_out[{k}]"
        correct = _Formula(
            _OUT_GRAD_INPUTS + (h,), lambda v: v[h] * _dE_dz(v, l), f"⟨{h}⟩·Σ_a ∂E/∂Oout_a·∂Oout_a/∂Oin{l}"
        )
        factors = (f"dE_dout[{l}]", f"dout_din[{l}]", h)
        diag = _Alternative("wrong method", "only the diagonal of the softmax Jacobian", _product(factors))
        return _Step(correct, (diag,) + _repeated_factor(factors))
    if name == "dE_dh2out_term":
        k, l = idx
        w = f"W_kl[{k},{l}]"
        correct = _Formula(
            _OUT_GRAD_INPUTS + (w,), lambda v: v[w] * _dE_dz(v, l), f"⟨{w}⟩·Σ_a ∂E/∂Oout_a·∂Oout_a/∂Oin{l}"
        )
        factors = (f"dE_dout[{l}]", f"dout_din[{l}]", w)
        diag = _Alternative("wrong method", "only the diagonal of the softmax Jacobian", _product(factors))
        return _Step(correct, (diag,) + _repeated_factor(factors))
    if name == "dE_dh2out":
        k = idx[0]
        keys = tuple(f"dE_dh2out_term[{k},{l}]" for l in (1, 2, 3))
        return _Step(_Formula(keys, lambda v: sum(v[t] for t in keys), " + ".join(f"⟨{t}⟩" for t in keys)))
    if name == "dh2out_dh2in":
        k = idx[0]
        z, h = f"h2_in[{k}]", f"h2_out[{k}]"
        sd = lambda t: _sigmoid(t) * (1 - _sigmoid(t))  # noqa: E731
        correct = _Formula((z,), lambda v: sd(v[z]), f"Sigmoid(⟨{z}⟩)·(1-Sigmoid(⟨{z}⟩))")
        alts = [
            _Alternative(
                "rounding carried",
                "σ(1-σ) evaluated with the rounded printed h2out instead of Sigmoid(h2in)",
                _Formula((h,), lambda v: v[h] * (1 - v[h]), f"⟨{h}⟩·(1-⟨{h}⟩)"),
            ),
            _Alternative(
                "wrong method",
                "sigmoid derivative evaluated at h2out instead of h2in",
                _Formula((h,), lambda v: sd(v[h]), f"Sigmoid(⟨{h}⟩)·(1-Sigmoid(⟨{h}⟩))"),
            ),
        ]
        for other in (1, 2, 3):
            if other != k:
                zo = f"h2_in[{other}]"
                alts.append(
                    _Alternative(
                        "wrong method",
                        f"sigmoid derivative evaluated at h2in{other} instead of h2in{k}",
                        _Formula((zo,), lambda v, zo=zo: sd(v[zo]), f"Sigmoid(⟨{zo}⟩)·(1-Sigmoid(⟨{zo}⟩))"),
                    )
                )
        return _Step(correct, tuple(alts))
    if name == "dW_jk":
        j, k = idx
        factors = (f"dE_dh2out[{k}]", f"dh2out_dh2in[{k}]", f"h1_out[{j}]")
        return _Step(_product(factors), _repeated_factor(factors))
    if name == "dh1out_dh1in":
        src = f"h1_in[{idx[0]}]"
        return _Step(_Formula((src,), lambda v: 1.0 if v[src] > 0 else 0.0, f"ReLU'(⟨{src}⟩)"))
    if name == "dE_dh1out":
        j = idx[0]
        keys = tuple((f"dE_dh2out[{k}]", f"dh2out_dh2in[{k}]", f"W_jk[{j},{k}]") for k in (1, 2, 3))
        flat = tuple(x for t in keys for x in t)
        correct = _Formula(
            flat,
            lambda v: sum(v[a] * v[b] * v[c] for a, b, c in keys),
            " + ".join("·".join(f"⟨{x}⟩" for x in t) for t in keys),
        )
        diag = _Alternative(
            "wrong method", "keeps only the k=j path (W_jk diagonal) instead of summing over k", _product(keys[j - 1])
        )
        return _Step(correct, (diag,))
    if name == "dW_ij":
        i, j = idx
        factors = (f"dE_dh1out[{j}]", f"dh1out_dh1in[{j}]", f"x[{i}]")
        return _Step(_product(factors), _repeated_factor(factors))
    if name in ("W_kl_new", "W_jk_new", "W_ij_new"):
        base = name[: -len("_new")]
        w, d = f"{base}[{idx[0]},{idx[1]}]", f"d{base}[{idx[0]},{idx[1]}]"
        return _update(w, d)
    raise KeyError(f"no step defined for {key!r}")


# ------------------------------------------------------------ step-local evaluation


@dataclass(frozen=True)
class _Input:
    value: float
    uncertainty: float  # how far the slide's own working value may sit from the print
    text: str


@dataclass(frozen=True)
class _Evaluated:
    step: _Step
    inputs: Mapping[str, _Input]
    recomputed: float
    allowance: float  # propagated input uncertainty of ``recomputed``


def _fmt_given(v: float) -> str:
    return f"{v:g}"


def _evaluate(data: SlideData) -> list[_Evaluated]:
    """Recompute every record from the values the reader saw printed before it.

    An input resolves to the most recent earlier printing of that id (reading order),
    because that is the number the slide visibly worked with; givens come from the
    ``given`` section. An operand or recap is a copy step: its input is the most
    recent earlier *result* of the same id.
    """
    recs = data.records
    out: list[_Evaluated] = []
    exact_flags: list[bool] = []

    def resolve(pos: int, key: str, results_only: bool = False) -> _Input:
        for q in range(pos - 1, -1, -1):
            r = recs[q]
            if r.id == key and (not results_only or r.role == "result"):
                return _Input(r.number, 0.0 if exact_flags[q] else r.half_unit, r.value)
        if not results_only and data.given.has(key):
            v = data.given.value(key)
            return _Input(v, 0.0, _fmt_given(v))
        raise KeyError(f"{recs[pos].id} on slide {recs[pos].slide} needs {key}, which is not printed before it")

    for pos, rec in enumerate(recs):
        if rec.role == "result":
            step = _step_for(rec.id)
            inputs = {k: resolve(pos, k) for k in step.correct.inputs}
            for alt in step.alternatives:
                for k in alt.formula.inputs:
                    if k not in inputs:
                        try:
                            inputs[k] = resolve(pos, k)
                        except KeyError:
                            pass  # an alternative the slide could not have used; skipped when classifying
        else:
            src = resolve(pos, rec.id, results_only=True)
            step = _Step(_Formula((rec.id,), lambda v, key=rec.id: v[key], f"⟨{rec.id}⟩"))
            inputs = {rec.id: src}
        value, allowance = _apply(step.correct, inputs)
        exact_input = all(inputs[k].uncertainty == 0.0 for k in step.correct.inputs)
        # A printed value is exact only if nothing upstream was rounded and printing lost
        # nothing; then later steps get no rounding allowance for it (1.8 is 1.80, not 1.8±0.05).
        exact_flags.append(exact_input and abs(rec.number - value) <= 1e-9 * max(1.0, abs(value)))
        out.append(_Evaluated(step, inputs, value, allowance))
    return out


def _apply(formula: _Formula, inputs: Mapping[str, _Input]) -> tuple[float, float]:
    """Value of ``formula`` and the spread its inputs' rounding allows.

    Each rounded input is moved by ± its half-unit on its own; the larger change of
    the result is its share. Summing the shares is the first-order worst case, and
    moving by the full half-unit (not a tiny finite difference) keeps it honest for
    the few non-linear steps (exp, log, sigmoid).
    """
    vals = {k: inputs[k].value for k in formula.inputs}
    base = formula.fn(vals)
    spread = 0.0
    for k in formula.inputs:
        u = inputs[k].uncertainty
        if u == 0.0:
            continue
        shares = []
        for sign in (1.0, -1.0):
            moved = dict(vals)
            moved[k] = vals[k] + sign * u
            try:
                shares.append(abs(formula.fn(moved) - base))
            except (ValueError, ZeroDivisionError, OverflowError):
                shares.append(math.inf)
        spread += max(shares)
    return base, spread


def _render(formula: _Formula, inputs: Mapping[str, _Input]) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        text = inputs[key].text if key in inputs else key
        # "0.01·(-0.5531)" reads as the slide meant it; "0.01·-0.5531" does not.
        return f"({text})" if text.startswith("-") and m.start() > 0 else text

    return re.sub(r"⟨([^⟩]+)⟩", sub, formula.text)


def recompute_step_local(data: SlideData) -> dict[int, float]:
    """Each printed number redone correctly from the slide's own printed inputs.

    Keys are record indices into ``data.records`` (ids repeat across slides). The
    inputs of a step are the numbers printed before it (e.g. ``W_kl_new[k,l]`` from
    the printed ``δW_kl[k,l]`` on the same slide, ``h2_in`` from the printed
    ``h1_out``), so a wrong number upstream does not make every later step look
    wrong. Where the slides use a wrong method the recomputation uses the right one
    on the same printed inputs: ``dW_kl[k,l]`` is ``h2_out[k]·∂E/∂o_in[l]`` with
    ``∂E/∂o_in`` through the full softmax Jacobian from the printed ``o_out`` and
    ``y``; ``dE_dh1out[j]`` sums over all ``k``. Operands and recaps (a number
    printed again) are recomputed as the earlier printed result they copy.
    """
    return {n: e.recomputed for n, e in enumerate(_evaluate(data))}


# ----------------------------------------------------------------- classification


def _tolerance(printed: str, allowance: float) -> float:
    half = 0.5 * 10.0 ** (-_decimals(printed))
    return half + allowance + 1e-12


def _within(printed: str, value: float, target: float, allowance: float) -> bool:
    return abs(value - target) <= _tolerance(printed, allowance)


def _truncates_to(printed: str, value: float, target: float) -> bool:
    """The slide cut ``target`` off after its printed digits instead of rounding it."""
    d = _decimals(printed)
    scale = 10.0**d
    return math.isclose(math.trunc(target * scale + math.copysign(1e-9, target)) / scale, value, abs_tol=1e-12)


def _digit_variants(printed: str) -> Iterator[tuple[str, str, str]]:
    """Strings the printed number might have been before a copying slip.

    Yields (variant, class, description). Transpositions, a stray/missing 0 and a
    shifted decimal point are "misplaced digit"; a single wrong digit is reported
    separately because it cannot be told apart from an arithmetic slip.
    """
    sign = "-" if printed.startswith("-") else ""
    body = printed.lstrip("+-")
    digits = [n for n, ch in enumerate(body) if ch.isdigit()]
    seen = {body}

    def emit(v: str, cls: str, desc: str) -> Iterator[tuple[str, str, str]]:
        if v not in seen and re.fullmatch(r"\d+(\.\d+)?", v):
            seen.add(v)
            yield sign + v, cls, desc

    for a, b in zip(digits, digits[1:]):
        if body[a] != body[b]:
            s = list(body)
            s[a], s[b] = s[b], s[a]
            v = "".join(s)
            yield from emit(v, "misplaced digit", f"adjacent digits transposed ({sign}{v} → {printed})")
    for shift in (-2, -1, 1, 2):
        v = _fmt_shifted(body, shift)
        if v is not None:
            places = "place" if abs(shift) == 1 else "places"
            desc = f"decimal point shifted {abs(shift)} {places} ({sign}{v} → {printed})"
            yield from emit(v, "misplaced digit", desc)
    for n in digits:
        if body[n] == "0":
            v = body[:n] + body[n + 1 :]
            yield from emit(v, "misplaced digit", f"a stray 0 ({sign}{v} → {printed})")
    point = body.find(".")
    for n in range(point + 1 if point >= 0 else len(body), len(body) + 1):
        v = body[:n] + "0" + body[n:]
        yield from emit(v, "misplaced digit", f"a 0 dropped ({sign}{v} → {printed})")
    for n in digits:
        for ch in "0123456789":
            if ch != body[n]:
                v = body[:n] + ch + body[n + 1 :]
                yield from emit(v, "one digit", f"one digit differs ({sign}{v} → {printed})")


def _fmt_shifted(body: str, shift: int) -> str | None:
    """``body`` with its decimal point moved ``shift`` places to the right, same digits."""
    intpart, _, frac = body.partition(".")
    digits = intpart + frac
    point = len(intpart) + shift
    if point <= 0:
        digits = "0" * (1 - point) + digits
        point = 1
    if point > len(digits):
        return None
    v = digits[:point].lstrip("0") or "0"
    rest = digits[point:]
    return v + ("." + rest if rest else "")


def _g(v: float) -> str:
    # Enough digits to show a 7-decimal print like 0.2005849 against its explanation.
    return f"{v:.8g}"


def _sig_digits(text: str) -> int:
    return len(text.lstrip("+-").replace(".", "").lstrip("0"))


def _credible_variants(printed: str) -> Iterator[tuple[str, str, str]]:
    # A copying-slip story is only worth telling when the repaired number pins the
    # target down tightly; with 3 significant digits some variant fits almost anything.
    for variant, cls, desc in _digit_variants(printed):
        if _sig_digits(variant) >= 4:
            yield variant, cls, desc


def _classify(rec: SlideRecord, ev: _Evaluated) -> str:
    """One line: ``"<class>: <what went wrong> — <numbers>"``, most specific story first."""
    p, printed, r = rec.number, rec.value, ev.recomputed
    alts = []
    for alt in ev.step.alternatives:
        if all(k in ev.inputs for k in alt.formula.inputs):
            value, spread = _apply(alt.formula, ev.inputs)
            alts.append((alt, value, spread))
    correct = f"correct {_render(ev.step.correct, ev.inputs)} = {_g(r)}"

    def alt_numbers(alt: _Alternative, value: float) -> str:
        return f"{_render(alt.formula, ev.inputs)} = {_g(value)}"

    # 1. a named wrong method/formula that reproduces the print
    for alt, value, spread in alts:
        if _within(printed, p, value, spread):
            return f"{alt.cls}: {alt.summary} — {alt_numbers(alt, value)}; {correct}"
        if _truncates_to(printed, p, value):
            return f"{alt.cls}: {alt.summary} — {alt_numbers(alt, value)} (cut to {printed}); {correct}"
    # 2. right magnitude, wrong sign
    if _within(printed, -p, r, ev.allowance):
        return f"sign: right magnitude, wrong sign — {correct}"
    # 3. the right number with a digit misplaced while copying
    for variant, cls, desc in _credible_variants(printed):
        if cls == "misplaced digit" and _within(variant, float(variant), r, ev.allowance):
            kind, _, detail = desc.partition(" (")
            return f"misplaced digit: {kind} — {detail.rstrip(')')}; {correct}"
    # 4. a wrong method, then a copying slip on top
    for alt, value, spread in alts:
        if alt.cls == "formula slip":
            continue
        for variant, cls, desc in _credible_variants(printed):
            if _within(variant, float(variant), value, spread):
                kind, _, detail = desc.partition(" (")
                if cls != "misplaced digit":
                    kind = "one digit miscopied"
                return (
                    f"{alt.cls}: {alt.summary}, plus {kind} — {alt_numbers(alt, value)}, "
                    f"copied as {detail.rstrip(')')}; {correct}"
                )
    # 5. rounding only: the right value, badly cut to the printed digits
    if _truncates_to(printed, p, r):
        return f"rounding: truncated instead of rounded — {correct}"
    d = rec.decimals
    # Only a value that had to be rounded for printing can be "rounding": when the correct
    # result fits in the printed digits (4.004 for 4.001) the slip is in the arithmetic.
    needs_rounding = abs(r * 10.0**d - round(r * 10.0**d)) > 1e-6
    if needs_rounding and d > 1 and round(p, d - 1) == round(r, d - 1):
        return f"rounding: last printed digit wrong (right to {d - 1} decimals) — {correct}"
    # 6. nothing explains it
    details = [f"printed {printed}, {correct} (off by {_g(p - r)})"]
    for variant, cls, desc in _credible_variants(printed):
        if cls == "one digit" and _within(variant, float(variant), r, ev.allowance):
            details.append(desc)
            break
    if alts:
        alt, value, _ = alts[0]
        ratio = f", printed/that = {p / value:.3g}" if value else ""
        details.append(f"nor {alt.summary}: {alt_numbers(alt, value)}{ratio}")
    return "formula slip: the printed inputs do not give this value — " + "; ".join(details)


def compare(data: SlideData, exact: Mapping[str, float]) -> list[SlideCheck]:
    """Judge every printed number, in reading order.

    A number matches when ``|printed − recomputed| ≤ ½·10^−d + Σ_i s_i`` where ``d`` is
    the number of decimals printed and ``s_i`` is how much the step's result moves
    when printed input ``i`` moves by half a unit in *its* last printed digit (the
    larger of the two directions). That second term is the slide's licence to have
    worked with more digits than it printed for its inputs; it is zero for inputs
    that are exact (givens, and printed values that lost nothing to printing and
    were computed from exact inputs, like ``1.8``), so a slip cannot hide in a
    precision the slide never had. A step-local recomputation is compared, not
    the exact value, so each slip is charged to the slide that makes it.

    ``exact`` maps ids to the engine's exact values; missing ids give ``nan``.
    Mismatches get a one-line ``reason`` (see :class:`SlideCheck`).
    """
    checks = []
    for rec, ev in zip(data.records, _evaluate(data)):
        ok = _within(rec.value, rec.number, ev.recomputed, ev.allowance)
        checks.append(
            SlideCheck(
                step=rec.id,
                slide=rec.slide,
                printed=rec.value,
                slide_value=rec.number,
                recomputed=ev.recomputed,
                exact=float(exact.get(rec.id, math.nan)),
                match=ok,
                reason="" if ok else _classify(rec, ev),
            )
        )
    return checks


def slips(checks: Sequence[SlideCheck]) -> list[str]:
    """One line per (slide, quantity, kind of slip), in slide order.

    Entries of one matrix/vector that went wrong the same way are folded into one
    line, with the first entry's numbers as the example.
    """
    groups: dict[tuple[int, str, str], list[SlideCheck]] = {}
    for c in checks:
        if c.match:
            continue
        family = _parse_id(c.step)[0]
        headline = c.reason.split(" — ", 1)[0]
        groups.setdefault((c.slide, family, headline), []).append(c)
    lines = []
    for (slide, _family, headline), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        first = members[0]
        which = ", ".join(m.step for m in members)
        exact = "" if math.isnan(first.exact) else f", exact {_g(first.exact)}"
        lines.append(
            f"slide {slide}: {which}: {headline} (e.g. {first.step} printed {first.printed}, "
            f"correct from the slide's inputs {_g(first.recomputed)}{exact})"
        )
    return lines
