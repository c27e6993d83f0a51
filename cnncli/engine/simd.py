"""Vector code LLVM does not write from a Numba loop: a register block of multiply-adds.

A direct convolution is fast only if each output is loaded and stored once,
its partial sum kept in a register while every channel and tap is added to it.
Numba has no vector type and LLVM's vectoriser keeps a loop's accumulators in
memory, so :func:`multiply_add_block` writes the loop as LLVM IR itself (a
Numba intrinsic, like :func:`cnncli.engine.blas.gemm`):

    for c in range(C):                     # channels
        for t in range(T):                 # taps: offs[t] into the padded plane
            v_j = x[xoff + c·plane + offs[t] + j·L : ... + L]     j < V vectors
            acc[f][j] += w[woff + (c·T + t)·FB + f] · v_j         f < FB filters
    y[yoff + f·yrow + j·L : ... + L] = acc[f][j]

with FB·V accumulators of L lanes in registers (``llvm.fma`` on
``<L x float>``): per channel and tap, V loads of x and FB broadcast weights
feed FB·V fused multiply-adds. Every output is the same sum in the same order
(channel-major, then taps) wherever the arrays sit and whichever thread runs
it, so the results do not depend on the split of the work.

The lane count is the machine's vector register (:data:`VECTOR_BYTES`, from
the CPU features Numba compiles for); :func:`cnncli.engine.rules.register_block`
picks FB and V so that the accumulators fit its registers.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

__all__ = ["VECTOR_BYTES", "VECTOR_REGISTERS", "copy", "copy_add", "lanes", "multiply_add_block", "multiply_add_reduce",
           "zero"]


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


def multiply_add_block(filters: int, vectors: int):
    """An intrinsic ``block(x, xoff, w, woff, y, yoff, yrow, channels, plane, offs)`` for FB = ``filters``, V = ``vectors``.

    ``x``, ``w``, ``y``: 1-D contiguous arrays of one float dtype; ``offs``: 1-D
    int64 array of the T tap offsets; the other arguments integers. Computes the
    loop of the module docstring: FB rows of V·L outputs, row f at
    ``y[yoff + f·yrow:]``. Reads x up to ``xoff + (channels-1)·plane +
    max(offs) + V·L``; the caller keeps that inside x.
    """

    @intrinsic
    def block(typingctx, x, xoff, w, woff, y, yoff, yrow, channels, plane, offs):
        if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.float64)
                and w.dtype == x.dtype and y.dtype == x.dtype):
            return None
        sig = types.void(x, xoff, w, woff, y, yoff, yrow, channels, plane, offs)

        def codegen(context, builder, signature, args):
            argtypes = signature.args
            dtype = argtypes[0].dtype
            width = lanes(dtype.bitwidth // 8)
            real = ir.FloatType() if dtype == types.float32 else ir.DoubleType()
            vec = ir.VectorType(real, width)
            vec_ptr = vec.as_pointer()
            i32, i64 = ir.IntType(32), ir.IntType(64)
            align = dtype.bitwidth // 8

            def data(i):
                return context.make_array(argtypes[i])(context, builder, args[i]).data

            def integer(i):
                return context.cast(builder, args[i], argtypes[i], types.int64)

            def const(value):
                return ir.Constant(i64, value)

            x_ptr, w_ptr, y_ptr, offs_ptr = data(0), data(2), data(4), data(9)
            taps = builder.extract_value(context.make_array(argtypes[9])(context, builder, args[9]).shape, 0)
            xoff_, woff_, yoff_, yrow_, channels_, plane_ = (integer(i) for i in (1, 3, 5, 6, 7, 8))
            module = builder.module
            name = f"llvm.fma.v{width}f{dtype.bitwidth}"
            fma = module.globals.get(name) or ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name)
            splat_mask = ir.Constant(ir.VectorType(i32, width), [0] * width)
            undef = ir.Constant(vec, ir.Undefined)

            # Accumulators and counters as allocas in the entry block: LLVM's mem2reg turns them into registers.
            entry = ir.IRBuilder(builder.function.entry_basic_block)
            entry.position_at_start(builder.function.entry_basic_block)
            acc = [[entry.alloca(vec) for _ in range(vectors)] for _ in range(filters)]
            c_slot, t_slot = entry.alloca(i64), entry.alloca(i64)
            for row in acc:
                for a in row:
                    builder.store(ir.Constant(vec, [0.0] * width), a)
            builder.store(const(0), c_slot)

            c_head = builder.append_basic_block("block.channel")
            t_init = builder.append_basic_block("block.taps")
            t_head = builder.append_basic_block("block.tap")
            t_body = builder.append_basic_block("block.tap_body")
            c_next = builder.append_basic_block("block.next_channel")
            done = builder.append_basic_block("block.store")
            builder.branch(c_head)

            builder.position_at_end(c_head)
            c = builder.load(c_slot)
            builder.cbranch(builder.icmp_signed("<", c, channels_), t_init, done)

            builder.position_at_end(t_init)
            builder.store(const(0), t_slot)
            builder.branch(t_head)

            builder.position_at_end(t_head)
            t = builder.load(t_slot)
            builder.cbranch(builder.icmp_signed("<", t, taps), t_body, c_next)

            builder.position_at_end(t_body)
            start = builder.add(builder.add(xoff_, builder.mul(c, plane_)), builder.load(builder.gep(offs_ptr, [t])))
            inputs = [builder.load(builder.bitcast(builder.gep(x_ptr, [builder.add(start, const(j * width))]),
                                                   vec_ptr), align=align)
                      for j in range(vectors)]
            w_row = builder.add(woff_, builder.mul(builder.add(builder.mul(c, taps), t), const(filters)))
            for f in range(filters):
                scalar = builder.load(builder.gep(w_ptr, [builder.add(w_row, const(f))]))
                weight = builder.shuffle_vector(builder.insert_element(undef, scalar, ir.Constant(i32, 0)),
                                                undef, splat_mask)
                for j in range(vectors):
                    builder.store(builder.call(fma, [weight, inputs[j], builder.load(acc[f][j])]), acc[f][j])
            builder.store(builder.add(t, const(1)), t_slot)
            builder.branch(t_head)

            builder.position_at_end(c_next)
            builder.store(builder.add(c, const(1)), c_slot)
            builder.branch(c_head)

            builder.position_at_end(done)
            for f in range(filters):
                row = builder.add(yoff_, builder.mul(const(f), yrow_))
                for j in range(vectors):
                    target = builder.bitcast(builder.gep(y_ptr, [builder.add(row, const(j * width))]), vec_ptr)
                    builder.store(builder.load(acc[f][j]), target, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return block


def _halves_sum(builder, value, width):
    # The lanes of ``value`` added as a fixed tree (halves, then quarters, ...): the same order everywhere.
    i32 = ir.IntType(32)
    while width > 1:
        half = width // 2
        low = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(i32, half), list(range(half))))
        high = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(i32, half), list(range(half, width))))
        value, width = builder.fadd(low, high), half
    return builder.extract_element(value, ir.Constant(i32, 0))


def multiply_add_reduce(filters: int, taps: int):
    """An intrinsic ``reduce(x, xoff, offs, dy, dyoff, dyrow, length, out, ooff, out_f, out_k)`` for FB = ``filters``,
    K = ``taps``: the weight gradient's sums over positions,

        out[ooff + f·out_f + k·out_k] += Σ over q < length of dy[dyoff + f·dyrow + q] · x[xoff + offs[k] + q]

    for f < FB, k < K, with ``length`` a multiple of L. Each sum runs in L lanes (``llvm.fma``), one
    accumulator per (f, k) in a register, and its lanes are added as a fixed tree at the end: the same bits
    wherever the arrays sit. Reads ``offs[:K]``, x up to ``xoff + max(offs) + length``.
    """

    @intrinsic
    def reduce(typingctx, x, xoff, offs, dy, dyoff, dyrow, length, out, ooff, out_f, out_k):
        if not (isinstance(x, types.Array) and x.dtype in (types.float32, types.float64)
                and dy.dtype == x.dtype and out.dtype == x.dtype):
            return None
        sig = types.void(x, xoff, offs, dy, dyoff, dyrow, length, out, ooff, out_f, out_k)

        def codegen(context, builder, signature, args):
            argtypes = signature.args
            dtype = argtypes[0].dtype
            width = lanes(dtype.bitwidth // 8)
            real = ir.FloatType() if dtype == types.float32 else ir.DoubleType()
            vec = ir.VectorType(real, width)
            vec_ptr = vec.as_pointer()
            i64 = ir.IntType(64)
            align = dtype.bitwidth // 8

            def data(i):
                return context.make_array(argtypes[i])(context, builder, args[i]).data

            def integer(i):
                return context.cast(builder, args[i], argtypes[i], types.int64)

            def const(value):
                return ir.Constant(i64, value)

            x_ptr, offs_ptr, dy_ptr, out_ptr = data(0), data(2), data(3), data(7)
            xoff_, dyoff_, dyrow_, length_, ooff_, out_f_, out_k_ = (integer(i) for i in (1, 4, 5, 6, 8, 9, 10))
            module = builder.module
            name = f"llvm.fma.v{width}f{dtype.bitwidth}"
            fma = module.globals.get(name) or ir.Function(module, ir.FunctionType(vec, [vec, vec, vec]), name)

            entry = ir.IRBuilder(builder.function.entry_basic_block)
            entry.position_at_start(builder.function.entry_basic_block)
            acc = [[entry.alloca(vec) for _ in range(taps)] for _ in range(filters)]
            q_slot = entry.alloca(i64)
            for row in acc:
                for a in row:
                    builder.store(ir.Constant(vec, [0.0] * width), a)
            builder.store(const(0), q_slot)
            starts = [builder.add(xoff_, builder.load(builder.gep(offs_ptr, [const(k)]))) for k in range(taps)]
            rows = [builder.add(dyoff_, builder.mul(const(f), dyrow_)) for f in range(filters)]

            head = builder.append_basic_block("reduce.position")
            body = builder.append_basic_block("reduce.body")
            done = builder.append_basic_block("reduce.sum")
            builder.branch(head)

            builder.position_at_end(head)
            q = builder.load(q_slot)
            builder.cbranch(builder.icmp_signed("<", q, length_), body, done)

            builder.position_at_end(body)
            grads = [builder.load(builder.bitcast(builder.gep(dy_ptr, [builder.add(rows[f], q)]), vec_ptr),
                                  align=align)
                     for f in range(filters)]
            for k in range(taps):
                value = builder.load(builder.bitcast(builder.gep(x_ptr, [builder.add(starts[k], q)]), vec_ptr),
                                     align=align)
                for f in range(filters):
                    builder.store(builder.call(fma, [grads[f], value, builder.load(acc[f][k])]), acc[f][k])
            builder.store(builder.add(q, const(width)), q_slot)
            builder.branch(head)

            builder.position_at_end(done)
            for f in range(filters):
                for k in range(taps):
                    target = builder.gep(out_ptr, [builder.add(ooff_, builder.add(builder.mul(const(f), out_f_),
                                                                                  builder.mul(const(k), out_k_)))])
                    total = _halves_sum(builder, builder.load(acc[f][k]), width)
                    builder.store(builder.fadd(builder.load(target), total), target)
            return context.get_dummy_value()

        return sig, codegen

    return reduce


def _runs(builder, n, widths, body):
    # Calls body(offset, width) over [0, n): whole vectors of widths[0] in a loop, then at most one of each
    # narrower width, then single elements; every position once, in order.
    i64 = ir.IntType(64)
    entry = ir.IRBuilder(builder.function.entry_basic_block)  # an alloca in the entry block becomes a register
    entry.position_at_start(builder.function.entry_basic_block)
    done_slot = entry.alloca(i64)
    builder.store(ir.Constant(i64, 0), done_slot)
    for index, width in enumerate(widths + [1]):
        repeat = index == 0 or width == 1
        head = builder.append_basic_block(f"runs.{width}")
        work = builder.append_basic_block(f"runs.{width}.body")
        after = builder.append_basic_block(f"runs.{width}.after")
        builder.branch(head)
        builder.position_at_end(head)
        done = builder.load(done_slot)
        builder.cbranch(builder.icmp_signed("<=", builder.add(done, ir.Constant(i64, width)), n), work, after)
        builder.position_at_end(work)
        body(done, width)
        builder.store(builder.add(done, ir.Constant(i64, width)), done_slot)
        builder.branch(head if repeat else after)
        builder.position_at_end(after)


def _move(with_source: bool, with_add: bool):
    """An intrinsic writing n elements of dst from ``doff`` on: src's from ``soff`` on (plus ``add`` when
    ``with_add``), or zeros. Vector loads and stores of every width down to 2 elements, then single ones: a
    short row costs a few instructions, where a Numba loop pays for its alias checks and its scalar tail."""

    def build(context, builder, signature, args):
        argtypes = signature.args
        dtype = argtypes[0].dtype
        real = ir.FloatType() if dtype == types.float32 else ir.DoubleType()
        widths = []
        width = lanes(dtype.bitwidth // 8)
        while width >= 2:
            widths.append(width)
            width //= 2

        def integer(i):
            return context.cast(builder, args[i], argtypes[i], types.int64)

        dst = context.make_array(argtypes[0])(context, builder, args[0]).data
        doff = integer(1)
        if with_source:
            src = context.make_array(argtypes[2])(context, builder, args[2]).data
            soff, n = integer(3), integer(4)
            add = context.cast(builder, args[5], argtypes[5], dtype) if with_add else None
        else:
            n = integer(2)

        def body(offset, width):
            vtype = real if width == 1 else ir.VectorType(real, width)
            target = builder.bitcast(builder.gep(dst, [builder.add(doff, offset)]), vtype.as_pointer())
            if with_source:
                source = builder.bitcast(builder.gep(src, [builder.add(soff, offset)]), vtype.as_pointer())
                value = builder.load(source, align=dtype.bitwidth // 8)
                if add is not None:
                    if width == 1:
                        value = builder.fadd(value, add)
                    else:
                        splat = builder.shuffle_vector(
                            builder.insert_element(ir.Constant(vtype, ir.Undefined), add, ir.Constant(ir.IntType(32), 0)),
                            ir.Constant(vtype, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))
                        value = builder.fadd(value, splat)
            else:
                value = ir.Constant(vtype, 0.0 if width == 1 else [0.0] * width)
            builder.store(value, target, align=dtype.bitwidth // 8)

        _runs(builder, n, widths, body)
        return context.get_dummy_value()

    return build


def _float_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype in (types.float32, types.float64)


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
