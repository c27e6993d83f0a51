"""GEMM callable from inside a kernel: numpy's own BLAS, reached through a function pointer.

Numba's ``np.dot`` needs SciPy, which the engine does not depend on. A GEMM
run by numpy between kernels makes a convolution unfold a big chunk of the
batch per call, to keep Python's per-call cost small, and its column matrices
(many MB) go through main memory. With the BLAS callable from a kernel, a
convolution runs a few samples at a time inside one kernel, its columns small
enough to stay in the core's cache (:mod:`cnncli.engine.conv`).

The BLAS is the CBLAS ``?gemm`` that numpy's own library exports (numpy's
wheels bundle OpenBLAS under prefixed names with 64-bit integers; other builds
export the plain ``cblas_?gemm``). Its address is handed to the kernels as an
integer argument and called through :func:`gemm`, a Numba intrinsic, so the
kernels stay cacheable on disk (a ctypes function object inside a kernel would
not be). :data:`FUNCTIONS` is None where no such symbol is found; the
convolution then keeps its numpy path.
"""

from __future__ import annotations

import ctypes
import os
from typing import NamedTuple

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cnncli.engine import threads

__all__ = ["FUNCTIONS", "Functions", "gemm"]

NO_TRANS, TRANS = 111, 112  # CBLAS_TRANSPOSE
_ROW_MAJOR = 101

# Symbol names, (float32, float64) and whether their integers are 64-bit, most specific first.
_NAMES = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", True),
    ("cblas_sgemm64_", "cblas_dgemm64_", True),
    ("scipy_cblas_sgemm", "scipy_cblas_dgemm", False),
    ("cblas_sgemm", "cblas_dgemm", False),
)


class Functions(NamedTuple):
    """Addresses of CBLAS sgemm and dgemm, and whether they take 64-bit integers."""

    sgemm: int
    dgemm: int
    ilp64: bool

    def of(self, dtype) -> int:
        """The address for arrays of ``dtype`` (float32 or float64)."""
        return self.sgemm if dtype.itemsize == 4 else self.dgemm


def _find() -> Functions | None:
    for path in threads.loaded_openblas():
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        for single, double, ilp64 in _NAMES:
            if hasattr(lib, single) and hasattr(lib, double):
                address = ctypes.cast(getattr(lib, single), ctypes.c_void_p).value
                return Functions(address, ctypes.cast(getattr(lib, double), ctypes.c_void_p).value, ilp64)
    return None


FUNCTIONS: Functions | None = _find()


@intrinsic
def gemm(typingctx, address, ilp64, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Row-major C = op(A) @ op(B) + beta·C through the CBLAS GEMM at ``address``.

    ``a``, ``b``, ``c``: arrays of one float dtype whose first element starts
    the matrix (slices are fine: leading dimensions ``lda``, ``ldb``, ``ldc``
    in elements); ``trans_a``/``trans_b``: NO_TRANS or TRANS; ``ilp64``: the
    library's integers are 64-bit (else 32-bit). Must run with the BLAS on one
    thread, as the engine configures it.
    """
    if not (isinstance(a, types.Array) and a.dtype in (types.float32, types.float64)
            and b.dtype == a.dtype and c.dtype == a.dtype):
        return None
    sig = types.void(address, ilp64, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = ir.FloatType() if a.dtype == types.float32 else ir.DoubleType()
        ptr = ir.IntType(8).as_pointer()
        argtypes = signature.args

        def data(i):
            array = context.make_array(argtypes[i])(context, builder, args[i])
            return builder.bitcast(array.data, ptr)

        def integer(i, width):
            value = context.cast(builder, args[i], argtypes[i], types.int64)
            return value if width is i64 else builder.trunc(value, width)

        alpha = ir.Constant(real, 1.0)
        beta_value = context.cast(builder, args[11], argtypes[11], a.dtype)
        address_value = context.cast(builder, args[0], argtypes[0], types.int64)
        wide = context.cast(builder, args[1], argtypes[1], types.boolean)
        # Two call sites, one per integer width; the flag picks one at run time.
        with builder.if_else(wide) as (then64, then32):
            for branch, width in ((then64, i64), (then32, i32)):
                with branch:
                    fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, width, width, width, real, ptr, width,
                                                           ptr, width, real, ptr, width])
                    fn = builder.inttoptr(address_value, fnty.as_pointer())
                    builder.call(fn, [
                        ir.Constant(i32, _ROW_MAJOR), integer(2, i32), integer(3, i32),
                        integer(4, width), integer(5, width), integer(6, width), alpha,
                        data(7), integer(8, width), data(9), integer(10, width), beta_value,
                        data(12), integer(13, width),
                    ])
        return context.get_dummy_value()

    return sig, codegen
