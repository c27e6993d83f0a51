"""The engine: a graph of :mod:`cnncli.model` made runnable, forward and backward, on Numba kernels.

This docstring is the engine's map: its files, which path runs which layer
and by which rule (for a convolution, a table of strategies), where it runs in parallel, and the words it uses.

Files, top-down
---------------

==============  ==========================================================
network         :class:`~cnncli.engine.network.Network`: parameters, the
                layers of a graph, forward, loss, backward, ``predict``,
                ``gradients`` (of a class score, at a node and the input)
parts           a batch split into parts, one per core (threads or
                worker processes), gradients combined in part order
batch           where a part sits in its batch: the rows batch norm's
                parts exchange, the place dropout draws by
processes       worker processes: shared memory, control words;
worker          the worker process's own side (its replica's loop)
layers          forward and backward of every layer kind, side by side,
                registered in ``LAYERS`` (one per kind of model.kinds)
losses, optim   loss functions (value and gradient), SGD and Adam
boxes           detection's vocabulary: the ragged record of labelled
                boxes, IoU, non-maximum suppression
heads           the detection heads by layer kind: ``yolo`` (a grid of
                boxes: targets, responsibility, decoding, loss) and
                ``localize`` (one class and box an image), each a module
                of the same functions, value and gradient
init            initial parameter values, a registry of named schemes
conv/           the convolution: the plain reference (``reference``), the
                ordered table of strategies and the picker
                (``strategies``), a call's shapes (``geometry``) and the
                NCHW kernels of the taps, groups, chunks and depthwise
                strategies (``general``)
pool            the pooling kernels
winograd        3×3 stride-1 convolution by Winograd's F(2×2, 3×3)
blocked         'same' stride-1 convolution as register-blocked direct
                loops, forward and both gradients; the forward pass of
                narrow strided layers with the filters in the lanes
products        matrix products with filters (or channels) in the lanes,
                made of ``simd``'s register blocks (Winograd's 16 products,
                ``blocked``'s weight gradient)
layout          NCHW planes to and from rows of channels (channels
                innermost), for the kernels with channels in the lanes
simd            the vector code Numba does not write, as LLVM IR: register
                blocks of multiply-adds (``blocked``'s and ``products``'
                inner loops), Winograd's tile transforms, an L × L
                transpose, and row moves (copies, zeros, stride-2 gathers)
                for the padding, unfolding and storing of every conv path
blas            numpy's CBLAS GEMM, callable from inside a kernel
norm            batch normalization's kernels (statistics, normalise, gradients)
dense           the dense layer's weight gradient (an outer product at
                one or two samples)
elementwise     ReLU (alone or after a residual sum) and its gradient
draws           counter-based random numbers (dropout's masks)
fast/           optional speed: fused conv → activation → tiled-pool
                blocks, in NCHW (``fused``) and batch-innermost
                (``lanes``), and what both share (``vector``)
rules           every threshold by which a path is chosen
arrays          argument checks, output sizes, per-thread scratch buffers
threads         the two thread pools (Numba's, OpenBLAS's) and the
                slab-split GEMM (``matmul``)
memory          glibc keeps freed memory for the next batch (no page faults)
jit             Numba's flags, set once: ``kernel``, ``parallel_kernel``,
                ``vector_kernel``, ``vector_parallel_kernel``,
                ``exact_kernel``
==============  ==========================================================

A second engine, PyTorch, lives outside this package
(:mod:`cnncli.exchange.torch_engine`, ``train --engine torch``): it runs the
passes of the module ``export --to torch`` writes, over tensors that share
memory with a :class:`Network`'s parameter arrays, and leaves the rest of
training (data, loss, optimizer, checkpoints) to the same code as this engine.

Which path runs which layer
---------------------------

Every layer kind has one plain path, which ``backprop-trace``, ``features``
and the gradient checks use (``Network(fast=False)``: every node's value and
gradient kept): :mod:`~cnncli.engine.layers`, and for a convolution the
reference of :mod:`~cnncli.engine.conv.reference` (numpy, a kernel tap at a
time). ``train``, ``eval`` and ``predict`` build ``Network(fast=True)``, which
takes the faster paths below where they apply; each is tested equal to the
plain path (and against finite differences).

Convolution strategies
----------------------

A fast network gives each convolution call, on its own or at the head of a
fused chain, the first strategy of this table (``conv.STRATEGIES``, in this
order) that applies to it and pays, pass by pass (``conv.pick``; every
threshold in ``rules``). A *fused chain* is a conv of stride 1, dilation 1,
one group → relu or tanh (→ avgpool of square tiles, ``pool.is_tile_pool``)
whose inner outputs nothing else reads (:class:`~cnncli.engine.layers.FusedConv`,
``network.fused_chains``). What pays depends on the batch (a part of it),
the dtype, numpy's BLAS (``blas.FUNCTIONS``: a CBLAS GEMM callable from a
kernel) and the CPU (``simd.VECTOR_REGISTERS`` and the vector width
``simd.lanes``); ``cnncli summarize MODEL --paths`` says which strategy each
layer takes on this machine. Files are under ``cnncli/engine``.

=========  ===========================================  =============================================  ===============
strategy   applies when                                 pays when (``rules``)                          file
=========  ===========================================  =============================================  ===============
winograd   3×3, stride 1, dilation 1, one group         ``winograd_pays``: >= 32 channels, 256 tiles   winograd.py
lanes      a fused chain                                ``lanes``: >= ``MIN_LANES`` samples, small     fast/lanes.py
fused      a fused chain                                always                                         fast/fused.py
blocked    'same' stride 1, one group                   ``blocked_pays``: 8-64 filters, <= 9 taps,     blocked.py
                                                        32 vector registers (AVX-512)
outer      strided, one group, filters fill vectors     ``outer_pays``: <= 64 channels; forward only   blocked.py
depthwise  stride 1, dilation 1                         ``depthwise``: <= 2 filters, 32 taps a group   conv/general.py
taps       stride 1, a CBLAS GEMM                       ``tap_gemms``; backward: not direct weights    conv/general.py
groups     a CBLAS GEMM                                 ``group_gemms``; backward: not direct weights  conv/general.py
chunks     a convolution on its own                     always                                         conv/general.py
=========  ===========================================  =============================================  ===============


* **winograd** (F(2×2, 3×3)): 16 products of (tiles, C) by (C, F) per group
  of samples, or per band of a big sample's tiles (``rules.winograd_band``),
  2.25x fewer multiply-adds; channels innermost, the products with filters in
  the lanes, the transforms in registers; narrower layers or fewer tiles lose
  more to its transforms than they gain (all of ResNet-20's and ResNet-56's
  32- and 64-channel layers but the stride-2 ones, VGG's and ResNet-18's 3×3
  layers). At the head of a chain only conv → relu (VGG-16's): the
  convolution, then the ReLU in place; 2.25x fewer multiply-adds save more
  than the fusion's one pass over the output.
* **lanes**: the chain batch-innermost, every pixel a vector of samples;
  **fused**: the chain in NCHW, in chunks (``rules.chunk_size``), small
  column matrices kept for the backward pass (``rules.keep_cols``). In both,
  layers with few weights (``rules.direct_weights``) run as direct loops
  without a column matrix. The fused block runs the general convolution's
  unfold + GEMM or direct loops (those of **depthwise**) and its backward
  pass, and adds bias, activation and pooling as a step after them; the lanes
  block has its own layout, hence its own loops.
* **blocked**: register-blocked direct loops (ResNet-20's 16-channel layers,
  3-channel stems, 1×1 and 5×5 layers): every output summed in registers
  over all channels and taps and stored once, where a GEMM per tap with K =
  C of 16-32 goes through memory nine times; positions in the lanes, the
  padding left out by lane masks, or for filters that fill blocks of four
  vectors the filters in the lanes (``rules.outer_forward``, with 32 vector
  registers); the input gradient the same loops over dy, the weight gradient
  channel-taps × filters in the lanes.
* **outer**: the forward pass of strided layers (ResNets' downsampling 3×3
  and 1×1 layers, the 7×7 and 11×11 stems) by the same filters-in-the-lanes
  loops, each output's inputs a strided window of the padded planes; their
  backward pass is the next strategy's (groups or chunks).
* **depthwise**: direct loops for groups so thin that a GEMM would have a
  single-digit dimension, forward and backward, the batch in one chunk; the
  same loops give **fused** chains with few weights their passes.
* **taps**: one GEMM per kernel tap reading the padded input in place, no
  column matrix (it beats unfolding on narrow layers; with more
  channels a tap's GEMM is too short for its weights).
* **groups**: unfold + GEMM in groups of a few samples whose columns fit a
  core's L2 (``rules.sample_group``), the GEMMs called from the kernel
  (``blas``), where the layer has no more filters than a group has output
  positions (each group's GEMMs read all the weights and its weight-gradient
  slot).
* **chunks**: unfold + numpy's GEMMs between kernels, in chunks of up to
  ``CONV_COLS_BUDGET_BYTES`` of columns, each GEMM split into slabs over
  the threads; the weight-gradient GEMM transposed when
  ``rules.dw_transposed``. Whole padded rows when ``rules.flat_rows``.
* taps, groups and chunks take their backward pass by chunks when the weight
  gradient comes from direct dot products (``rules.direct_weights``, flat
  rows only): a GEMM with a handful of rows runs at a fraction of BLAS's
  speed.
* The network's first conv computes no input gradient in a fast network.

Other layers
------------

* **maxpool**: ``pool.maxpool2d_*``: stride 1 takes the whole plane at once
  (``pool._max_flat``); other strides take the windows inside a row across
  all its output columns at once where a row has at least
  ``rules.MAXPOOL_VECTOR_COLUMNS`` of them, else one window at a time.
* **avgpool**: ``pool.tile_avgpool_*``
  for square non-overlapping tiles (``pool.is_tile_pool``), else the window
  kernels ``pool.avgpool2d_*``. **adaptive_avgpool**: the window kernels
  (nothing to do when input and output sizes agree). **subsample**: the
  window kernels' sum times a learned coefficient.
* **batchnorm**: the kernels of ``norm`` (per-sample row sums, combined in
  batch order; one pass each for the normalisation and the gradients). In a
  part of a split training batch the rows of all parts are exchanged
  (``batch``), so every part normalises with the whole batch's statistics.
* **relu**: ``elementwise``; in a fast network a ReLU that alone reads a
  batch norm or a residual ``add`` is folded into that layer's pass
  (``Network.folded``).
* **dropout**: masks from ``draws``, by (seed, layer, training pass, sample
  index in the batch): the same whether or not the batch is split.
* **dense**: ``threads.matmul`` (slab-split when big); the weight gradient
  from one or two samples (``rules.dense_outer``) as an outer product a row
  at a time (``dense``), into the layer's array of the pass before. Other activations,
  softmax, LRN, flatten, add and concat: numpy in :mod:`~cnncli.engine.layers`.
* **shortcut_pad** (ResNet's option-A shortcut): numpy slicing, in :mod:`~cnncli.engine.layers`.

Where it runs in parallel, and why
----------------------------------

Three levels, each used where the one above it is not:

1. **Parts** (:mod:`~cnncli.engine.parts`): a fast network splits a batch
   into one part per core (``rules.part_count``, at least ``MIN_PART``
   samples each). Each part runs on a network of its own with one Numba
   thread and one-thread BLAS, so the cores meet once per pass instead of
   after every kernel (and, while training a network with batch norm, at
   each batch norm, forward and backward, to exchange the parts' sums), and
   the GEMMs run in parallel too.
   Inference runs parts on threads; training runs them in worker processes
   (:mod:`~cnncli.engine.processes`), where no part waits for another's GIL,
   with threads standing in while the workers boot or if one fails. Parts
   are combined in a fixed order: the same bits on threads or processes.
2. **Slabs** and **groups**: outside a part (a batch too small to split), a
   convolution's groups of samples (or Winograd's bands of a big sample's
   tiles) are shared out over the threads, and a
   big numpy GEMM is cut into slabs of its output that the calling
   thread and the pool's threads take in turn (``threads.matmul``,
   ``rules.slab_count``); OpenBLAS itself stays on one thread, because its own
   pool spins and collapses when another process holds a core.
3. **prange** inside the kernels: over (sample, channel) planes or (sample,
   filter) pairs, on Numba's OpenMP threads, which wait passively
   (:mod:`~cnncli.engine.threads`); one thread inside a part.

Every parallel kernel writes only its own slice and adds partial sums in a
fixed order, so results are bit-identical run to run. Per-thread scratch
buffers (``arrays.scratch``) let replicas run side by side without sharing one;
they start on a 64-byte boundary everywhere, and kernels that reduce arrays of
any alignment compile without fastmath (``jit.EXACT_FLAGS``), so that a part
gets the same bits on a thread or in a worker process.

Words
-----

block
    a YAML block (a named, reusable group of layers in a model file), or a
    fused conv block (``fast.fused.Block``, ``fast.lanes.Block``); nothing else.
part
    a contiguous slice of a batch that one core runs (``parts``).
replica
    a network built on another's parameter and buffer arrays that runs one
    part, on a thread or in a worker process.
place
    where a part sits in its batch (first sample, batch size, training
    pass); exchange: how the parts of a batch share per-sample rows.
worker
    a child process that holds a replica; its *slot* is its region of the
    shared memory (control words, inputs, outputs, gradients).
chunk
    a slice of a batch (or part) whose column matrix fits the cache budget,
    inside one convolution call (numpy GEMMs).
group
    a few samples whose columns fit in a core's L2, inside one convolution
    kernel (in-kernel GEMMs); not to be confused with a convolution's
    ``groups`` (channel groups, as in PyTorch).
band
    a run of one sample's output rows (the group and tap kernels, when a
    sample's columns are more than a core's L2) or of its Winograd tiles
    (when its transformed tiles are more than a group's worth).
slab
    a slice of one GEMM's output computed by one thread.
tap
    one position (i, j) of a convolution's kernel; a *tap GEMM* multiplies
    that position's weights (F, C) by the window of the padded input under it.
tile
    in Winograd's F(2×2, 3×3), a 2×2 block of outputs and the 4×4 input
    window under it; transformed, 16 numbers per channel (V) or filter (M).
register block
    the outputs one call of ``simd``'s loops keeps in vector registers:
    FB filters × V vectors of positions (positions in the lanes), P
    positions or channel-taps × V vectors of filters (filters in the lanes).
lane mask
    an integer whose bit l says whether lane l of a vector of positions reads
    its input (a tap inside the plane) or adds nothing (the padding).
junk
    positions numbered along whole padded rows that are not outputs:
    computed and dropped, or given zero gradient.
lanes
    the batch-innermost layout (C, H, W, N): every pixel a vector of samples.
flat rows
    unfolding whole padded rows (pitch = padded width), junk outputs included.
"""
