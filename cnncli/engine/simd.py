"""Vector code LLVM does not write from a Numba loop: a register block of multiply-adds.

A direct convolution is fast only if each output is loaded and stored once,
its partial sum kept in a register while every channel and tap is added to it.
Numba has no vector type and LLVM's vectoriser keeps a loop's accumulators in
memory, so :func:`multiply_add_block` writes the loop as LLVM IR itself (a
Numba intrinsic, like :func:`cnncli.engine.blas.gemm`):

    for t in range(T):                     # taps: offs[t] from an output to its input
        m_j = masks[moff + j·mstride + t]                         j < V vectors
        for c in range(C):                 # channels
            v_j = x[xoff + c·plane + offs[t] + j·L : ... + L], lanes outside m_j zero
            acc[f][j] += w[woff + (c·T + t)·FB + f] · v_j         f < FB filters
    y[yoff + f·yrow + j·L : ... + L] = acc[f][j]

with FB·V accumulators of L lanes in registers (``llvm.fma`` on
``<L x float>``): per channel and tap, V loads of x and FB broadcast weights
feed FB·V fused multiply-adds. A mask is an integer whose bit l says whether
lane l reads x (``llvm.masked.load``; a lane left out is neither read nor
added): a tap of an output on the border of its plane falls outside it, and
the mask, not a border of zeros, leaves it out. Every output is the same sum
in the same order (tap-major, then channels) wherever the arrays sit and
whichever thread runs it, so the results do not depend on the split of the
work.

:func:`multiply_add_outer` is the other way round: P broadcast scalars times
V vectors (filters in the lanes), P·V accumulators, V loads and P broadcasts
per step, half the loads per multiply-add of the block above; it needs the
filters innermost, which :func:`transpose` (an L × L block in registers)
provides and undoes.

The lane count is the machine's vector register (:data:`VECTOR_BYTES`, from
the CPU features Numba compiles for); :func:`cnncli.engine.rules.register_block`
and :func:`~cnncli.engine.rules.outer_vectors` pick the blocks so that the
accumulators fit its registers.

The row moves (:func:`copy`, :func:`copy_add`, :func:`zero`,
:func:`copy_stride2`) are here for the same reason: a Numba loop over a short
row (a padded plane's 8-34 elements) pays for alias checks and a scalar tail,
far below the memory's speed; whole vectors, then halves, quarters and single
elements, run at memory speed.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

__all__ = ["VECTOR_BYTES", "VECTOR_REGISTERS", "copy", "copy_add", "copy_stride2", "lanes", "multiply_add_block",
           "multiply_add_outer", "tile_transform", "transpose", "zero"]


def _features() -> str:
    # What Numba compiles for: its CPU override if one is set, else this machine.
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    return llvm.get_host_cpu_features().flatten()


_FEATURES = set(f[1:] for f in _features().split(",") if f.startswith("+"))

#: Bytes in one vector register: 64 with AVX-512, 32 with AVX, 16 otherwise (SSE, NEON).
VECTOR_BYTES = 64 if "avx512f" in _FEATURES else 32 if "avx" in _FEATURES else 16
#: Vector registers the compiler can allocate: 32 with AVX-512 (and on AArch64), 16 otherwise.
VECTOR_REGISTERS = 32 if "avx512f" in _FEATURES or not {"sse2", "avx"} & _FEATURES else 16


def lanes(itemsize: int) -> int:
    """Elements of ``itemsize`` bytes in one vector register."""
    return VECTOR_BYTES // itemsize


class _Emit:
    """What every generator here needs while it writes IR into a kernel: the arguments as pointers and int64s,
    the dtype's vector type, constants, splats, ``llvm.fma``, and variables in the entry block (LLVM's mem2reg
    turns those into registers; an alloca elsewhere would grow the stack on every pass of a loop)."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder, self.signature, self.args = context, builder, signature, args
        self.dtype = signature.args[0].dtype
        self.width = lanes(self.dtype.bitwidth // 8)
        self.real = ir.FloatType() if self.dtype == types.float32 else ir.DoubleType()
        self.align = self.dtype.bitwidth // 8
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        self._entry = ir.IRBuilder(builder.function.entry_basic_block)
        self._entry.position_at_start(builder.function.entry_basic_block)

    def vector(self, width: int | None = None):
        """The vector type of ``width`` lanes (the register's by default); the scalar type for one lane."""
        width = self.width if width is None else width
        return self.real if width == 1 else ir.VectorType(self.real, width)

    def data(self, i):
        """Argument i (an array): a pointer to its first element."""
        return self.context.make_array(self.signature.args[i])(self.context, self.builder, self.args[i]).data

    def length(self, i):
        """Argument i (a 1-D array): its length."""
        array = self.context.make_array(self.signature.args[i])(self.context, self.builder, self.args[i])
        return self.builder.extract_value(array.shape, 0)

    def integer(self, i):
        """Argument i as an int64."""
        return self.context.cast(self.builder, self.args[i], self.signature.args[i], types.int64)

    def real_arg(self, i):
        """Argument i as the arrays' float type."""
        return self.context.cast(self.builder, self.args[i], self.signature.args[i], self.dtype)

    def const(self, value: int):
        return ir.Constant(self.i64, value)

    def variable(self, type_, value=None):
        """A variable (an alloca in the entry block), set to ``value`` here when given."""
        slot = self._entry.alloca(type_)
        if value is not None:
            self.builder.store(value, slot)
        return slot

    def zeros(self, width: int | None = None):
        width = self.width if width is None else width
        return ir.Constant(self.vector(width), 0.0 if width == 1 else [0.0] * width)

    def splat(self, scalar, width: int | None = None):
        """A vector of ``width`` copies of ``scalar``."""
        width = self.width if width is None else width
        undef = ir.Constant(self.vector(width), ir.Undefined)
        one = self.builder.insert_element(undef, scalar, ir.Constant(self.i32, 0))
        return self.builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(self.i32, width), [0] * width))

    def at(self, pointer, index, width: int | None = None):
        """A pointer to ``width`` elements (a vector, or one for width 1) at ``pointer[index]``."""
        return self.builder.bitcast(self.builder.gep(pointer, [index]), self.vector(width).as_pointer())

    def load(self, pointer, index, width: int | None = None):
        return self.builder.load(self.at(pointer, index, width), align=self.align)

    def store(self, value, pointer, index, width: int | None = None):
        self.builder.store(value, self.at(pointer, index, width), align=self.align)

    def mask(self, table, index):
        """The lane mask ``table[index]`` (an int64 whose bit l is lane l) as an ``<L x i1>``."""
        bits = self.builder.load(self.builder.gep(table, [index]))
        return self.builder.bitcast(self.builder.trunc(bits, ir.IntType(self.width)),
                                    ir.VectorType(ir.IntType(1), self.width))

    def masked_load(self, pointer, index, mask):
        """The vector at ``pointer[index]``, zero in the lanes ``mask`` leaves out (which are not read)."""
        vec = self.vector()
        name = f"llvm.masked.load.v{self.width}f{self.dtype.bitwidth}.p0"
        module = self.builder.module
        fn = module.globals.get(name) or ir.Function(
            module, ir.FunctionType(vec, [vec.as_pointer(), self.i32, mask.type, vec]), name)
        return self.builder.call(fn, [self.at(pointer, index), ir.Constant(self.i32, self.align), mask, self.zeros()])

    def fma(self, a, b, c):
        """a·b + c, fused, lane by lane."""
        name = f"llvm.fma.v{self.width}f{self.dtype.bitwidth}"
        module = self.builder.module
        vec = self.vector()
        fn = module.globals.get(name) or ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name)
        return self.builder.call(fn, [a, b, c])

    def _counted(self, name: str, slot, condition, step: int, body, repeat: bool = True):
        # while condition(i): body(i); i += step  (once at most unless ``repeat``), i the int64 in ``slot``
        builder = self.builder
        head = builder.append_basic_block(f"{name}.head")
        work = builder.append_basic_block(f"{name}.body")
        after = builder.append_basic_block(f"{name}.after")
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.load(slot)
        builder.cbranch(condition(i), work, after)
        builder.position_at_end(work)
        body(i)
        builder.store(builder.add(i, self.const(step)), slot)
        builder.branch(head if repeat else after)
        builder.position_at_end(after)

    def loop(self, name: str, count, body):
        """for i in range(count): body(i), i an int64."""
        self._counted(name, self.variable(self.i64, self.const(0)),
                      lambda i: self.builder.icmp_signed("<", i, count), 1, body)

    def runs(self, name: str, n, body, spare: bool = False):
        """body(done, width) over [0, n) in order: whole vectors of the register's width in a loop, then at most
        one run of each narrower width down to 2, then single elements. ``spare``: a vector run only while at
        least one element follows it (for a body that reads one element past its run)."""
        done = self.variable(self.i64, self.const(0))
        widths = [self.width >> i for i in range(self.width.bit_length()) if self.width >> i >= 2] + [1]
        for index, width in enumerate(widths):
            op = "<" if spare and width > 1 else "<="

            def room(i, width=width, op=op):
                return self.builder.icmp_signed(op, self.builder.add(i, self.const(width)), n)

            self._counted(f"{name}.{width}", done, room, width, lambda i, width=width: body(i, width),
                          repeat=index == 0 or width == 1)


def _float_array(a) -> bool:
    # Contiguous ('C') float arrays only: the generators index from the first element with unit steps, which a
    # strided view would not have; such a call fails to compile rather than reading the wrong elements.
    return isinstance(a, types.Array) and a.dtype in (types.float32, types.float64) and a.layout == "C"


def _int64_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.int64 and a.layout == "C" and a.ndim == 1


def multiply_add_block(filters: int, vectors: int):
    """An intrinsic ``block(x, xoff, w, woff, y, yoff, yrow, channels, plane, offs, masks, moff, mstride)`` for
    FB = ``filters``, V = ``vectors``.

    ``x``, ``w``, ``y``: 1-D contiguous arrays of one float dtype; ``offs``: 1-D
    int64 array of the T tap offsets; ``masks``: 1-D int64 array of lane masks,
    vector j's at tap t ``masks[moff + j·mstride + t]``; the other arguments
    integers. Computes the loop of the module docstring: FB rows of V·L
    outputs, row f at ``y[yoff + f·yrow:]``. Reads x only in the lanes the
    masks select.
    """

    @intrinsic
    def block(typingctx, x, xoff, w, woff, y, yoff, yrow, channels, plane, offs, masks, moff, mstride):
        if not (_float_array(x) and _float_array(w) and _float_array(y) and w.dtype == y.dtype == x.dtype
                and _int64_array(masks)):
            return None

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            x_ptr, w_ptr, y_ptr, offs_ptr, masks_ptr = e.data(0), e.data(2), e.data(4), e.data(9), e.data(10)
            taps = e.length(9)
            xoff_, woff_, yoff_, yrow_, channels_, plane_, moff_, mstride_ = (
                e.integer(i) for i in (1, 3, 5, 6, 7, 8, 11, 12))
            acc = [[e.variable(e.vector(), e.zeros()) for _ in range(vectors)] for _ in range(filters)]
            def channel(c):
                def tap(t):
                    start = builder.add(builder.add(xoff_, builder.mul(c, plane_)),
                                        builder.load(builder.gep(offs_ptr, [t])))
                    inputs = [e.masked_load(x_ptr, builder.add(start, e.const(j * e.width)),
                                            e.mask(masks_ptr, builder.add(moff_, builder.add(
                                                builder.mul(e.const(j), mstride_), t))))
                              for j in range(vectors)]
                    w_row = builder.add(woff_, builder.mul(builder.add(builder.mul(c, taps), t), e.const(filters)))
                    for f in range(filters):
                        weight = e.splat(e.load(w_ptr, builder.add(w_row, e.const(f)), 1))
                        for j in range(vectors):
                            builder.store(e.fma(weight, inputs[j], builder.load(acc[f][j])), acc[f][j])

                e.loop("block.tap", taps, tap)

            e.loop("block.channel", channels_, channel)
            for f in range(filters):
                row = builder.add(yoff_, builder.mul(e.const(f), yrow_))
                for j in range(vectors):
                    e.store(builder.load(acc[f][j]), y_ptr, builder.add(row, e.const(j * e.width)))
            return context.get_dummy_value()

        return types.void(x, xoff, w, woff, y, yoff, yrow, channels, plane, offs, masks, moff, mstride), codegen

    return block


def multiply_add_outer(points: int, vectors: int):
    """An intrinsic ``outer(a, bases, rows_a, astep, b, boff, rows_b, bstep, count, out, ooff, ostride, add)`` for
    P = ``points``, V = ``vectors``: sums of rank-one updates, P scalars of a times V vectors of b,

        acc[i][v] = Σ over r, k < count of
            a[bases[i] + rows_a[r] + k·astep] · b[boff + rows_b[r] + k·bstep + v·L : ... + L]
        out[ooff + i·ostride + v·L : ... + L] = acc[i][v]  (+ what is there when ``add`` is nonzero)

    for i < P, v < V, r over ``rows_a`` (and ``rows_b``, as long), in that order: P·V accumulators in registers,
    each step V loads of b and P broadcast scalars of a. The convolution with filters in the lanes: a the
    zero-padded inputs, b the weights (forward: i an output position, r a tap, k a channel) or the gradients
    (weight gradient: i a channel and tap, r an output row, k its columns). Reads ``bases[:P]``.
    """

    @intrinsic
    def outer(typingctx, a, bases, rows_a, astep, b, boff, rows_b, bstep, count, out, ooff, ostride, add):
        if not (_float_array(a) and _float_array(b) and _float_array(out) and a.dtype == b.dtype == out.dtype
                and _int64_array(bases) and _int64_array(rows_a) and _int64_array(rows_b)):
            return None

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            a_ptr, bases_ptr, ra_ptr, b_ptr, rb_ptr, out_ptr = (e.data(i) for i in (0, 1, 2, 4, 6, 9))
            astep_, boff_, bstep_, count_, ooff_, ostride_, add_ = (e.integer(i) for i in (3, 5, 7, 8, 10, 11, 12))
            acc = [[e.variable(e.vector(), e.zeros()) for _ in range(vectors)] for _ in range(points)]
            firsts = [builder.load(builder.gep(bases_ptr, [e.const(i)])) for i in range(points)]

            def row(r):
                ra = builder.load(builder.gep(ra_ptr, [r]))
                rb = builder.add(boff_, builder.load(builder.gep(rb_ptr, [r])))
                starts = [builder.add(first, ra) for first in firsts]

                def step(k):
                    at = builder.add(rb, builder.mul(k, bstep_))
                    grads = [e.load(b_ptr, builder.add(at, e.const(v * e.width))) for v in range(vectors)]
                    ka = builder.mul(k, astep_)
                    for i in range(points):
                        scalar = e.splat(e.load(a_ptr, builder.add(starts[i], ka), 1))
                        for v in range(vectors):
                            builder.store(e.fma(scalar, grads[v], builder.load(acc[i][v])), acc[i][v])

                e.loop("outer.step", count_, step)

            e.loop("outer.row", e.length(2), row)
            adding = builder.icmp_signed("!=", add_, e.const(0))
            for i in range(points):
                at = builder.add(ooff_, builder.mul(e.const(i), ostride_))
                for v in range(vectors):
                    index = builder.add(at, e.const(v * e.width))
                    value = builder.load(acc[i][v])
                    with builder.if_then(adding):
                        builder.store(builder.fadd(e.load(out_ptr, index), value), acc[i][v])
                    e.store(builder.load(acc[i][v]), out_ptr, index)
            return context.get_dummy_value()

        return types.void(a, bases, rows_a, astep, b, boff, rows_b, bstep, count, out, ooff, ostride, add), codegen

    return outer


@intrinsic
def transpose(typingctx, dst, doff, dstride, src, soff, sstride, rows, bias, boff):
    """dst[doff + l·dstride + i] = src[soff + i·sstride + l] (+ bias[boff + l] if ``bias`` is not empty) for l < L,
    i < L: an L × L block transposed in registers (log2 L rounds of two-vector shuffles), rows i ≥ ``rows`` of src
    taken as zeros (and not read). 1-D contiguous arrays of one float dtype, not overlapping."""
    if not (_float_array(dst) and _float_array(src) and _float_array(bias) and src.dtype == dst.dtype == bias.dtype):
        return None

    def codegen(context, builder, signature, args):
        e = _Emit(context, builder, signature, args)
        dst_, src_ = e.data(0), e.data(3)
        doff_, dstride_, soff_, sstride_, rows_ = (e.integer(i) for i in (1, 2, 4, 5, 6))
        width = e.width
        block = []
        for i in range(width):
            slot = e.variable(e.vector(), e.zeros())
            present = builder.icmp_signed("<", e.const(i), rows_)
            with builder.if_then(present):
                builder.store(e.load(src_, builder.add(soff_, builder.mul(e.const(i), sstride_))), slot)
            block.append(builder.load(slot))
        span = 1
        while span < width:  # swap the off-diagonal span × span sub-blocks of every 2span × 2span block
            for i in range(width):
                if i & span:
                    continue
                low = [lane if not lane & span else width + lane - span for lane in range(width)]
                high = [lane + span if not lane & span else width + lane for lane in range(width)]
                a, b = block[i], block[i + span]
                block[i] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(e.i32, width), low))
                block[i + span] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(e.i32, width), high))
            span *= 2
        bias_, boff_ = e.data(7), e.integer(8)
        with_bias = builder.icmp_signed(">", e.length(7), e.const(0))
        for lane in range(width):
            slot = e.variable(e.vector(), block[lane])
            with builder.if_then(with_bias):
                shift = e.splat(e.load(bias_, builder.add(boff_, e.const(lane)), 1))
                builder.store(builder.fadd(builder.load(slot), shift), slot)
            e.store(builder.load(slot), dst_, builder.add(doff_, builder.mul(e.const(lane), dstride_)))
        return context.get_dummy_value()

    return types.void(dst, doff, dstride, src, soff, sstride, rows, bias, boff), codegen


def _move(with_source: bool, with_add: bool):
    """Codegen writing n elements of dst from ``doff`` on: src's from ``soff`` on (plus ``add`` when
    ``with_add``), or zeros. Vector moves of every width from the register's down to 2 elements (whole
    vectors in a loop, then at most one of each narrower width), then single elements: a short row costs a few
    instructions, where a Numba loop pays for its alias checks and its scalar tail."""

    def codegen(context, builder, signature, args):
        e = _Emit(context, builder, signature, args)
        dst, doff = e.data(0), e.integer(1)
        if with_source:
            src, soff, n = e.data(2), e.integer(3), e.integer(4)
            add = e.real_arg(5) if with_add else None
        else:
            n = e.integer(2)

        def run(done, width):
            if with_source:
                value = e.load(src, builder.add(soff, done), width)
                if add is not None:
                    value = builder.fadd(value, add if width == 1 else e.splat(add, width))
            else:
                value = e.zeros(width)
            e.store(value, dst, builder.add(doff, done), width)

        e.runs("move", n, run)
        return context.get_dummy_value()

    return codegen


@intrinsic
def copy(typingctx, dst, doff, src, soff, n):
    """dst[doff : doff + n] = src[soff : soff + n] (1-D contiguous arrays of one float dtype, not overlapping)."""
    if not (_float_array(dst) and _float_array(src) and src.dtype == dst.dtype):
        return None
    return types.void(dst, doff, src, soff, n), _move(True, False)


@intrinsic
def copy_add(typingctx, dst, doff, src, soff, n, add):
    """dst[doff : doff + n] = src[soff : soff + n] + add, elementwise (arrays as for :func:`copy`)."""
    if not (_float_array(dst) and _float_array(src) and src.dtype == dst.dtype):
        return None
    return types.void(dst, doff, src, soff, n, add), _move(True, True)


@intrinsic
def zero(typingctx, dst, doff, n):
    """dst[doff : doff + n] = 0 (a 1-D contiguous float array)."""
    if not _float_array(dst):
        return None
    return types.void(dst, doff, n), _move(False, False)


@intrinsic
def copy_stride2(typingctx, dst, doff, src, soff, n):
    """dst[doff + k] = src[soff + 2k] for k < n: every other element (a stride-2 convolution's unfold). Vectors of
    twice the width loaded and their even lanes kept; never reads past src[soff + 2(n - 1)]."""
    if not (_float_array(dst) and _float_array(src) and src.dtype == dst.dtype):
        return None

    def codegen(context, builder, signature, args):
        e = _Emit(context, builder, signature, args)
        dst_, doff_, src_, soff_, n_ = e.data(0), e.integer(1), e.data(2), e.integer(3), e.integer(4)

        def run(done, width):
            start = builder.add(soff_, builder.mul(done, e.const(2)))
            if width == 1:
                value = e.load(src_, start, 1)
            else:  # 2·width elements, the even lanes kept; the last one loaded is the one past the run's last kept
                pair = e.load(src_, start, 2 * width)
                value = builder.shuffle_vector(pair, pair, ir.Constant(ir.VectorType(e.i32, width),
                                                                       list(range(0, 2 * width, 2))))
            e.store(value, dst_, builder.add(doff_, done), width)

        e.runs("stride2", n_, run, spare=True)
        return context.get_dummy_value()

    return types.void(dst, doff, src, soff, n), codegen


def _signed_sum(builder, coefficients, values):
    # Σ c·v for c in {-1, 0, 1}, in index order from the first positive term (an exact sequence of adds and
    # subtracts, the same wherever it runs); a negated term when none is positive; None (zero) when no term is
    # left (a value of None is zero).
    terms = [(c, v) for c, v in zip(coefficients, values) if c and v is not None]
    if not terms:
        return None
    first = next((i for i, (c, _) in enumerate(terms) if c > 0), None)
    if first is None:
        total = builder.fneg(terms[0][1])
        rest = terms[1:]
    else:
        total = terms[first][1]
        rest = terms[:first] + terms[first + 1:]
    for c, v in rest:
        total = builder.fadd(total, v) if c > 0 else builder.fsub(total, v)
    return total


def tile_transform(left, right, accumulate: bool):
    """An intrinsic ``transform(src, stab, sbase, sscale, soff, dst, dtab, dbase, dscale, doff, count)`` computing
    Y = left · X · rightᵀ for a tile X of p × q vectors into Y of a × b, with ``left`` (a × p) and ``right``
    (b × q) matrices of -1, 0 and 1 (Winograd's transforms): additions and subtractions only, rows first.

    X[i][j] is the run ``src[stab[sbase + i·q + j]·sscale + soff + c]`` for c < ``count``, Y[i][j] the run
    ``dst[dtab[dbase + i·b + j]·dscale + doff + c]``: the tables name rows (positions of a plane with channels
    innermost, or planes of transformed tiles) and the runs go across them, whole vectors first. With
    ``accumulate`` Y is added to what dst holds (tiles that overlap). ``src``, ``dst``: 1-D contiguous arrays
    of one float dtype; ``stab``, ``dtab``: 1-D int64 arrays.
    """
    left = tuple(tuple(int(c) for c in row) for row in left)
    right = tuple(tuple(int(c) for c in row) for row in right)
    if any(c not in (-1, 0, 1) for row in left + right for c in row):
        raise ValueError(f"tile_transform: coefficients must be -1, 0 or 1, got {left} and {right}")
    p, q, a, b = len(left[0]), len(right[0]), len(left), len(right)

    @intrinsic
    def transform(typingctx, src, stab, sbase, sscale, soff, dst, dtab, dbase, dscale, doff, count):
        if not (_float_array(src) and _float_array(dst) and src.dtype == dst.dtype and _int64_array(stab)
                and _int64_array(dtab)):
            return None

        def codegen(context, builder, signature, args):
            e = _Emit(context, builder, signature, args)
            src_, stab_, dst_, dtab_ = e.data(0), e.data(1), e.data(5), e.data(6)
            sbase_, sscale_, soff_, dbase_, dscale_, doff_, count_ = (e.integer(i) for i in (2, 3, 4, 7, 8, 9, 10))

            def starts(table, base, scale, off, n):
                return [builder.add(builder.mul(builder.load(builder.gep(table, [builder.add(base, e.const(k))])),
                                                scale), off) for k in range(n)]

            sources = starts(stab_, sbase_, sscale_, soff_, p * q)
            targets = starts(dtab_, dbase_, dscale_, doff_, a * b)

            def run(done, width):
                x = [[e.load(src_, builder.add(sources[i * q + j], done), width) for j in range(q)]
                     for i in range(p)]
                rows = [[_signed_sum(builder, left[i], [x[k][j] for k in range(p)]) for j in range(q)]
                        for i in range(a)]
                for i in range(a):
                    for j in range(b):
                        value = _signed_sum(builder, right[j], rows[i])
                        value = e.zeros(width) if value is None else value
                        at = builder.add(targets[i * b + j], done)
                        if accumulate:
                            value = builder.fadd(e.load(dst_, at, width), value)
                        e.store(value, dst_, at, width)

            e.runs("transform", count_, run)
            return context.get_dummy_value()

        return types.void(src, stab, sbase, sscale, soff, dst, dtab, dbase, dscale, doff, count), codegen

    return transform
