"""Every threshold by which the engine picks a path: the one place they are set.

A rule here is a pure function of shapes and sizes; the kernels' wrappers, the
fused blocks and the network ask it and never compare against a number of
their own. Each number says in one line why it has its value; the measurement
it rests on is its row in the table "Why the engine's thresholds are what they
are" in benchmarks/README.md, to which every ``See: thresholds table`` below points.
"""

from __future__ import annotations

# --- chunks: a slice of the batch whose column matrix stays in cache ----------

#: A chunk's column matrix (taps × samples × output positions) is kept under this
#: size in the fused blocks, so that it is still in cache when the GEMM reads it
#: back. Layers whose per-sample matrix is bigger (VGG-16's) go one sample at a
#: time, where the GEMM is large enough not to care. See: thresholds table.
COLS_BUDGET_BYTES = 4 << 20

#: The general convolution's chunks may be larger: its GEMMs (ResNet's 3×3
#: layers of 16-64 filters, followed by batch norm, so never fused) are short in
#: one dimension and pay more per call than they lose to cache misses. See: thresholds table.
CONV_COLS_BUDGET_BYTES = 16 << 20


def chunk_size(n: int, per_sample_bytes: int, budget: int | None = None) -> int:
    """Samples per chunk for a batch of ``n``: equal chunks under ``budget`` (default :data:`COLS_BUDGET_BYTES`).

    Equal chunks rather than full ones and a runt, so that no chunk's GEMM is
    tiny. ``per_sample_bytes == 0`` (no column matrix) makes the batch one chunk.
    """
    budget = COLS_BUDGET_BYTES if budget is None else budget
    step = max(1, min(n, budget // max(per_sample_bytes, 1)))
    chunks = -(-n // step)
    return -(-n // chunks)


# --- the unfold's pitch: whole padded rows, or only the real outputs ---------

#: Stride-1 layers unfold whole padded rows, computing Wp - OW junk outputs per
#: row, which costs GEMM work in proportion to the filters; gathering only the
#: OW real outputs costs a slower unfold (short rows). Junk wins while
#: filters-per-group × junk fraction stays under this. See: thresholds table.
MAX_JUNK_WORK = 12.0


def flat_rows(filters_per_group: int, padded_width: int, out_width: int, unit_stride: bool) -> bool:
    """Whether a convolution unfolds whole padded rows (pitch = Wp) rather than real outputs (pitch = OW)."""
    junk_work = filters_per_group * (padded_width - out_width) / out_width
    return unit_stride and junk_work <= MAX_JUNK_WORK


# --- direct loops instead of unfold + GEMM -----------------------------------

#: Stride-1 groups this thin (depthwise-like: at most this many filters and this
#: many weights per filter) run as direct loops, where a GEMM would have a
#: single-digit dimension. See: thresholds table.
DEPTHWISE_MAX_FILTERS = 2
DEPTHWISE_MAX_TAPS = 32


def depthwise(taps_per_filter: int, filters_per_group: int, unit_stride: bool) -> bool:
    """Whether the general convolution runs as direct (depthwise) loops."""
    return unit_stride and filters_per_group <= DEPTHWISE_MAX_FILTERS and taps_per_filter <= DEPTHWISE_MAX_TAPS


#: Layers with at most this many weights (filters × taps, per group) get their
#: weight gradient from direct dot products (the general convolution, flat rows
#: only) and, in the fused blocks, run forward and both gradients as direct
#: loops: a GEMM with a handful of rows runs at a fraction of BLAS's speed.
#: LeNet-5's first layer (150 weights) is below, its second (2,400) above. See: thresholds table.
DIRECT_MAX_WEIGHTS = 256


def direct_weights(weights: int) -> bool:
    """Whether a layer with this many weights (per group) takes the direct loops."""
    return weights <= DIRECT_MAX_WEIGHTS


#: Up to this many filters per group (a short M), OpenBLAS computes the weight gradient
#: faster as cols @ dyᵀ (then transposed) than as dy @ colsᵀ. See: thresholds table.
DW_TRANSPOSED_MAX_FILTERS = 32


def dw_transposed(filters_per_group: int) -> bool:
    """Whether the weight-gradient GEMM runs as cols @ dyᵀ and is transposed after."""
    return filters_per_group <= DW_TRANSPOSED_MAX_FILTERS


# --- the fused NCHW block: column matrices kept for the backward pass ---------

#: A batch whose column matrices (all chunks) fit this size keeps them for the
#: backward pass instead of unfolding again; bigger ones (VGG-16's) are
#: recomputed rather than held.
KEEP_COLS_BYTES = 32 << 20
#: ... and only for layers with at most this much per sample. See: thresholds table.
KEEP_MAX_PER_SAMPLE = 1 << 20


def keep_cols(per_sample_bytes: int, n: int) -> bool:
    """Whether the NCHW fused block keeps a batch's column matrices for the backward pass."""
    return per_sample_bytes <= KEEP_MAX_PER_SAMPLE and per_sample_bytes * n <= KEEP_COLS_BYTES


# --- the batch-innermost (lanes) fused block ---------------------------------

#: Fewest samples for which the batch-innermost layout pays (one AVX-512 vector of float32).
#: See: thresholds table.
MIN_LANES = 16

#: Largest column matrix (all taps, the whole batch) the lanes block keeps for its backward pass; a layer with
#: a bigger one (and too many weights for direct loops) runs in the NCHW block's cache-sized chunks.
#: See: thresholds table.
MAX_LANES_COLS_BYTES = 16 << 20


def lanes(n: int, weights: int, cols_bytes: int) -> bool:
    """Whether a fused block runs batch-innermost: a vector's worth of samples, and either
    direct loops or a column matrix of at most :data:`MAX_LANES_COLS_BYTES`."""
    return n >= MIN_LANES and (direct_weights(weights) or cols_bytes <= MAX_LANES_COLS_BYTES)


# --- dense layers: the weight gradient of a batch of one or two -------------

#: A dense layer's weight gradient from at most DENSE_OUTER_MAX_BATCH samples is an outer product (a sum of
#: that many) written a row at a time, not a GEMM with K = N, which BLAS runs far below the memory's
#: bandwidth. See: thresholds table.
DENSE_OUTER_MAX_BATCH = 2


def dense_outer(n: int) -> bool:
    """Whether a dense layer's weight gradient from ``n`` samples is written as an outer product."""
    return n <= DENSE_OUTER_MAX_BATCH


# --- slabs: slices of one GEMM's output computed by separate threads ---------

#: The fewest multiply-adds in a slab of a GEMM that is split across the cores,
#: and the fewest rows (or columns) of its output: below that a slab's BLAS call
#: costs more to hand over than it saves. See: thresholds table.
SLAB_MIN_MACS = 2_000_000
SLAB_MIN_SIZE = 32


def worth_slabs(macs: int, size: int) -> bool:
    """Whether a GEMM of ``macs`` multiply-adds whose output's longer axis is ``size`` is big enough to split."""
    return macs >= 2 * SLAB_MIN_MACS and size >= 2 * SLAB_MIN_SIZE


def slab_count(macs: int, size: int, cores: int) -> int:
    """Slabs for such a GEMM on ``cores`` cores: up to two per core, so a core held elsewhere delays one slab."""
    if not worth_slabs(macs, size) or cores < 2:
        return 1
    return max(1, min(2 * cores, size // SLAB_MIN_SIZE, macs // SLAB_MIN_MACS))


#: The general convolution with in-kernel GEMMs (conv.general._forward_groups) unfolds this many bytes of
#: columns at a time (and the tap kernels keep a band of output this big): a core's 2 MB L2, from
#: which the GEMM reads them back; the layers this path takes are wide, and more samples per GEMM
#: pay up to that size. See: thresholds table.
GROUP_COLS_BYTES = 2 << 20


def sample_group(n: int, rows: int, per_row_bytes: int, per_sample_bytes: int) -> tuple[int, int]:
    """(samples, output rows) the in-kernel-GEMM convolution unfolds at a time, of ``n`` samples of ``rows``
    output rows: as many samples as fit GROUP_COLS_BYTES, or one sample in bands of rows that fit."""
    if per_sample_bytes <= GROUP_COLS_BYTES:
        return max(1, min(n, GROUP_COLS_BYTES // max(per_sample_bytes, 1))), rows
    return 1, max(1, min(rows, GROUP_COLS_BYTES // max(per_row_bytes, 1)))


#: A group's GEMMs read the layer's whole weights (forward, input gradient) and read and write its whole
#: weight gradient (a slot), for only the group's output positions: when a layer has more filters than a
#: group (or a band of one sample) has output positions, that traffic outweighs the group's columns, and the
#: layer runs in chunks of the batch instead, one GEMM per chunk split into slabs over the threads.
#: See: thresholds table.
def group_gemms(filters_per_group: int, group_positions: int) -> bool:
    """Whether the general convolution runs its GEMMs a group of samples at a time (else in chunks)."""
    return filters_per_group <= group_positions


# --- stride 1: a GEMM per kernel tap, reading the padded input in place ---------

#: Stride-1 layers with at most this many input channels per group run one
#: GEMM per kernel tap on windows of the padded input (conv.general._forward_taps),
#: while the junk outputs of whole padded rows, (Wp - OW) / OW, stay at most
#: MAX_TAP_JUNK: every tap's GEMM computes them. With many channels and short
#: rows each tap's GEMM repacks a big weight matrix for few outputs, and
#: unfolding wins. See: thresholds table.
TAP_MAX_CHANNELS = 128
MAX_TAP_JUNK = 0.25

#: The convolution's group and tap kernels sum the weight gradients of their
#: groups of samples into at most this many slots (a slot takes a run of groups
#: in order), added up in order after: one per core when the batch is not
#: split, and as few 2-9 MB partial gradients of wide layers as possible to
#: write and add up. See: thresholds table.
DW_SLOTS = 2


def dw_slots(groups: int) -> tuple[int, int]:
    """(slots, groups per slot) for the weight gradients of ``groups`` groups of samples."""
    slots = max(1, min(groups, DW_SLOTS))
    span = -(-groups // slots)
    return -(-groups // span), span


def tap_gemms(unit_stride: bool, channels: int, padded_width: int, out_width: int) -> bool:
    """Whether a convolution with this many input channels per group runs as one GEMM per kernel tap."""
    return (unit_stride and channels <= TAP_MAX_CHANNELS
            and (padded_width - out_width) <= MAX_TAP_JUNK * out_width)


def slot_samples(n: int) -> int:
    """Samples per weight-gradient slot when a batch of ``n`` is shared out as up to DW_SLOTS runs of samples."""
    return -(-n // min(n, DW_SLOTS))


def tap_plan(n: int, rows: int, per_row_bytes: int, per_sample_bytes: int) -> tuple[int, int]:
    """(samples per group, output rows per band) of the tap kernels: up to DW_SLOTS groups of samples (a slot
    each), a sample's output (or dy) in bands of rows that fit GROUP_COLS_BYTES."""
    _, band = sample_group(n, rows, per_row_bytes, per_sample_bytes)
    return slot_samples(n), band


# --- register-blocked direct loops: 'same' stride 1, and the forward pass of strided layers


def register_block(vector_registers: int) -> tuple[int, int]:
    """(filters, vectors) of the blocked convolution's register block (cnncli.engine.simd): FB·V accumulators
    plus V inputs and a broadcast weight must fit the vector registers, since a spill costs more than a
    narrower block. With 32 (AVX-512): 8 × 2, 19 registers; with 16 (AVX2, SSE): 4 × 2, 11 registers.
    See: thresholds table."""
    return (8, 2) if vector_registers >= 32 else (4, 2)


#: Filters per vector block of the blocked weight gradient (cnncli.engine.simd.multiply_add_outer), in vectors:
#: the most of these that a layer's filters fill (a wider block loads fewer vectors per multiply-add).
#: See: thresholds table.
OUTER_VECTORS = (4, 2, 1)


def outer_vectors(filter_vectors: int, vector_registers: int) -> int:
    """V of a register block with filters (or channels) in the lanes for columns that fill ``filter_vectors``
    vectors: the largest of OUTER_VECTORS not above them (2 at most with 16 registers); P points come from
    :func:`outer_points`. (cnncli.engine.products applies it, compiled, to each block of columns.) With 32 registers
    (AVX-512): 6 × 4, 12 × 2, 24 × 1."""
    most = 4 if vector_registers >= 32 else 2
    return next(v for v in OUTER_VECTORS if v <= min(most, max(filter_vectors, 1)))


def outer_points(vectors: int, vector_registers: int) -> int:
    """P of a register block of filters in the lanes with V = ``vectors``: P·V accumulators, with 8 registers to
    spare for the V loaded vectors and a broadcast."""
    return max(1, (vector_registers - 8) // vectors)


#: Filters per block, in vectors, of the blocked forward pass with filters in the lanes (6 × 4 accumulators
#: with 32 registers). See: thresholds table.
OUTER_FORWARD_VECTORS = 4


def outer_forward(filters: int, lanes: int, vector_registers: int) -> bool:
    """Whether the blocked forward pass holds filters in the lanes (cnncli.engine.simd.multiply_add_outer: P
    positions × OUTER_FORWARD_VECTORS vectors of filters, inputs broadcast) rather than positions
    (multiply_add_block): where the filters fill such blocks and the registers hold 6 × 4 accumulators, since
    the block over positions loads twice as much per multiply-add. See: thresholds table."""
    return vector_registers >= 32 and filters % (OUTER_FORWARD_VECTORS * lanes) == 0


#: The forward pass with filters in the lanes runs every position past the weights of this many bytes at a time
#: (a run of channels), which then stay in L1. See: thresholds table.
OUTER_WEIGHT_BYTES = 32 << 10


def outer_channels(taps: int, filter_block_bytes: int) -> int:
    """Channels per run of :func:`outer_forward`'s pass: their weights for one block of filters in
    OUTER_WEIGHT_BYTES."""
    return max(1, OUTER_WEIGHT_BYTES // (taps * filter_block_bytes))


#: The blocked convolution lays this many bytes of samples side by side (inputs and gradients), so that one
#: run of positions covers all of them: half a core's L2. See: thresholds table.
BLOCKED_GROUP_BYTES = 1 << 20


def blocked_group(per: int, per_sample_bytes: int) -> int:
    """Samples side by side in the blocked weight gradient, out of a slot of ``per``."""
    return max(1, min(per, BLOCKED_GROUP_BYTES // max(per_sample_bytes, 1)))


#: A cache line: the unit in which :func:`unaliased_stride` spaces rows.
CACHE_LINE_BYTES = 64


def unaliased_stride(elements: int, itemsize: int) -> int:
    """The stride, in elements, between rows of ``elements`` that a kernel reads together (a group's channels):
    whole cache lines, an odd number of them. Rows a multiple of 4 KB apart fall in one set of the L1 cache
    (64 sets of 64 bytes) and evict each other (16 channels of 32×32 float32 planes are 4 KB apart); an odd
    number of lines puts 64 consecutive rows in 64 different sets. See: thresholds table."""
    lines = -(-elements * itemsize // CACHE_LINE_BYTES)
    lines += 1 - lines % 2
    return lines * CACHE_LINE_BYTES // itemsize


def blocked_applies(stride: tuple[int, int], padding: tuple[int, int], kernel: tuple[int, int],
                    dilation: tuple[int, int], groups: int) -> bool:
    """Whether the blocked convolution (cnncli.engine.blocked) computes this layer: a 'same' convolution (stride
    1, padding dilation·(kernel - 1)/2 on each side, so that its input gradient is one too) of one group."""
    return (stride == (1, 1) and groups == 1 and 2 * padding[0] == dilation[0] * (kernel[0] - 1)
            and 2 * padding[1] == dilation[1] * (kernel[1] - 1))


#: Where it applies, the blocked convolution runs layers of at least BLOCKED_MIN_FILTERS filters (a register
#: block's worth), at most BLOCKED_MAX_CHANNELS input channels and filters, and at most BLOCKED_MAX_TAPS taps:
#: narrow layers, whose GEMMs per tap (K = C) go through memory once per tap, while the block sums every channel
#: and tap in registers; beyond 9 taps the weight gradient's extra taps go one at a time, and from 64 channels
#: Winograd or GEMMs keep up. See: thresholds table.
BLOCKED_MIN_FILTERS = 8
BLOCKED_MAX_CHANNELS = 64
BLOCKED_MAX_TAPS = 9
#: ... on a CPU of at least this many vector registers (AVX-512's 32): with AVX2's 16 the register block
#: (:func:`register_block`) is a quarter of the size, and the tap and group GEMMs are 2-6x faster. See: thresholds table.
BLOCKED_MIN_REGISTERS = 32


def blocked_pays(channels: int, filters: int, taps: int, registers: int) -> bool:
    """Whether the blocked convolution is the faster path for a layer it applies to (``taps`` = KH·KW) on a CPU
    of ``registers`` vector registers."""
    return (registers >= BLOCKED_MIN_REGISTERS and filters >= BLOCKED_MIN_FILTERS
            and max(channels, filters) <= BLOCKED_MAX_CHANNELS and taps <= BLOCKED_MAX_TAPS)


def outer_applies(stride: tuple[int, int], groups: int, filters: int, lanes: int) -> bool:
    """Whether the blocked forward pass with filters in the lanes computes this strided layer (any kernel,
    padding and dilation): one group, filters that fill whole vectors."""
    return stride != (1, 1) and groups == 1 and filters % lanes == 0


#: Where it applies, a strided layer's forward pass runs with the filters in the lanes when it has at most
#: OUTER_MAX_CHANNELS input channels; wider ones unfold (each block of filters reads every input again, and
#: a run of channels whose weights fit L1 is short). See: thresholds table.
OUTER_MAX_CHANNELS = 64


def outer_pays(channels: int) -> bool:
    """Whether the forward pass with filters in the lanes is the faster path for a strided layer it applies to."""
    return channels <= OUTER_MAX_CHANNELS


# --- 3×3 stride 1: Winograd's F(2×2, 3×3) ---------------------------------------


def winograd_applies(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                     groups: int) -> bool:
    """Whether Winograd F(2×2, 3×3) computes this convolution: 3×3, stride 1, no dilation, one group."""
    return kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and groups == 1


#: Where it applies, Winograd F(2×2, 3×3) (cnncli.engine.winograd) runs layers of at least this many input
#: channels, and calls with at least WINOGRAD_MIN_BATCH_TILES 2×2 tiles of output in the batch: 16 products of
#: (tiles, C) by (C, F), 2.25x fewer multiply-adds than 9 taps or an unfolded GEMM, but transforms of the inputs
#: and outputs that cost in proportion to C + F per tile, and of the weights, in proportion to C·F per call:
#: narrower layers lose to the blocked loops, calls with fewer tiles to the weights' transform.
#: See: thresholds table.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_BATCH_TILES = 256


def winograd_pays(channels: int, n: int, out_height: int, out_width: int) -> bool:
    """Whether Winograd is the faster path for a layer it applies to, on a batch of ``n``."""
    tiles = ((out_height + 1) // 2) * ((out_width + 1) // 2)
    return channels >= WINOGRAD_MIN_CHANNELS and n * tiles >= WINOGRAD_MIN_BATCH_TILES


#: The Winograd kernels transform this many bytes of tiles (16 per tile and channel, in and out) at a
#: time, half a core's L2 (the other half holds the weights' transforms and the planes being read), but
#: at least WINOGRAD_MIN_TILES tiles: each of the 16 GEMMs packs an (F, C) matrix, which a few dozen
#: tiles do not pay for on wide layers (512 channels at 4×4: 4 tiles a sample). See: thresholds table.
WINOGRAD_GROUP_BYTES = 1 << 20
WINOGRAD_MIN_TILES = 128


def winograd_band(channels: int, filters: int, tiles: int, itemsize: int) -> int:
    """Tiles per band when a call runs one sample at a time in bands of its tiles, shared out over the cores (0:
    in groups of samples): when one sample's transformed tiles are more than WINOGRAD_GROUP_BYTES and more than
    WINOGRAD_MIN_TILES, so that one big sample (VGG-16's at 224×224) keeps every core busy. See: thresholds table."""
    band = max(WINOGRAD_MIN_TILES, WINOGRAD_GROUP_BYTES // (16 * (channels + filters) * itemsize))
    return band if tiles > band else 0


def winograd_plan(n: int, channels: int, filters: int, tiles: int, itemsize: int) -> int:
    """Samples per group of the Winograd kernels, for a batch of ``n`` with ``tiles`` tiles each: the size above,
    then evened out so that the groups come in a multiple of DW_SLOTS (the backward pass's slots run in
    parallel, a slot to a core; 3 groups on 2 cores would leave one idle a third of the time)."""
    per_sample = 16 * (channels + filters) * tiles * itemsize
    wanted = max(1, min(n, max(WINOGRAD_GROUP_BYTES // per_sample, -(-WINOGRAD_MIN_TILES // tiles))))
    rounds = max(1, round(n / (DW_SLOTS * wanted)))
    return -(-n // (DW_SLOTS * rounds))


# --- max pooling --------------------------------------------------------------

#: Max pooling of stride 1 takes the whole plane at once (pool._max_flat); other
#: strides take the windows inside a row across all their output columns at
#: once (vectorised selects, strided loads) when there are at least this many
#: such columns in a row, else one window at a time: shorter rows lose more to
#: the strided loads than the vectors gain. See: thresholds table.
MAXPOOL_VECTOR_COLUMNS = 48


# --- parts: slices of the batch run on separate cores -------------------------

#: A batch is split across cores only into parts of at least this many samples: a smaller part runs its lanes
#: (MIN_LANES) half empty. See: thresholds table.
MIN_PART = 16


#: An inference pass that runs whole (not split into parts) and does fewer multiply-accumulates than this runs
#: its kernels on one Numba thread: waking the other threads for each of its layers costs more than they save (a
#: detector's frame, one image at a time). See: thresholds table.
SERIAL_MACS = 200_000_000


def serial(macs: int) -> bool:
    """Whether an unsplit inference pass of ``macs`` multiply-accumulates runs on one thread."""
    return macs < SERIAL_MACS


#: A scoring pass (validation, test) runs batches whose largest layer output is at most this many bytes, and at
#: most MAX_SCORE_BATCH images: 1000 MNIST digits at a time, but 96×96 canvases a hundred at a time (a thousand
#: would hold 590 MB in one layer's output and run at half the speed). See: thresholds table.
SCORE_BATCH_BYTES = 64 << 20
MAX_SCORE_BATCH = 1000


def score_batch(largest_output_bytes: int) -> int:
    """Images per forward pass when scoring a set, for a network whose largest layer output is
    ``largest_output_bytes`` a sample."""
    return max(1, min(MAX_SCORE_BATCH, SCORE_BATCH_BYTES // max(1, largest_output_bytes)))


def part_count(n: int, cores: int) -> int:
    """How many parts a batch of ``n`` splits into on ``cores`` cores."""
    return max(1, min(cores, n // MIN_PART))


#: A worker process (or the parent) spins on a control word this long before it
#: sleeps between checks: longer than the parent's own work between two steps
#: of a small network, short enough not to take much from another program that
#: shares the cores. See: thresholds table.
SPIN_SECONDS = 0.001
