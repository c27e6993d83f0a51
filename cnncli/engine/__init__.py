"""The engine: a graph of :mod:`cnncli.model` made runnable, forward and backward, on Numba kernels.

This docstring is the engine's map: its files, which path runs which layer
and by which rule, where it runs in parallel, and the words it uses.

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
init            initial parameter values, a registry of named schemes
conv, pool      the general NCHW convolution and pooling kernels
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

Every layer kind has one plain path in :mod:`~cnncli.engine.layers`, which
``backprop-trace`` and the gradient checks use (``Network(fast=False)``:
every node's value and gradient kept). ``train`` and ``eval`` build
``Network(fast=True)``, which takes the faster paths below where they apply;
each is tested equal to the plain path (and against finite differences).

* **conv**: in a fast network, a chain conv (stride 1, dilation 1, one group)
  → relu or tanh (→ avgpool with square tiles, ``pool.is_tile_pool``) whose
  inner outputs nothing else reads runs as one fused block
  (:class:`~cnncli.engine.layers.FusedConv`):

  - batch-innermost (``fast.lanes``) when ``rules.lanes``: at least
    ``MIN_LANES`` samples and few weights or a small column matrix;
  - else NCHW (``fast.fused``), in chunks (``rules.chunk_size``);
  - inside either, layers with few weights (``rules.direct_weights``) run as
    direct loops without a column matrix; the NCHW block keeps small column
    matrices for the backward pass (``rules.keep_cols``);
  - but a conv → relu chain whose convolution ``conv`` would run as Winograd
    (below; VGG-16's 3×3 layers) runs so, then the ReLU in place: 2.25x fewer
    multiply-adds save more than the fusion's one pass over the output.

  Every other conv runs in ``conv``: 3×3 stride 1, one group, at least 32
  channels and 256 output tiles in the batch (``rules.winograd_applies``,
  ``rules.winograd_pays``: all of ResNet-20's and ResNet-56's 32- and
  64-channel layers but the stride-2 ones, VGG's and ResNet-18's 3×3 layers)
  as Winograd F(2×2, 3×3) (``winograd``: 16 products of (tiles, C) by
  (C, F) per group of samples, or per band of a big sample's tiles
  (``rules.winograd_band``), 2.25x fewer multiply-adds; channels
  innermost, the products with filters in the lanes, the transforms in
  registers; narrower layers or fewer tiles lose more to its transforms
  than they gain); the other 'same' stride-1 layers of one group with 8-64
  filters, at most 64 channels and 9 taps (``rules.blocked_applies``,
  ``rules.blocked_pays``: ResNet-20's 16-channel layers, 3-channel stems,
  1×1 and 5×5 layers) as register-blocked direct loops (``blocked``: every
  output summed in registers over all channels and taps and stored once,
  where a GEMM per tap with K = C of 16-32 goes through memory nine times;
  positions in the lanes, the padding left out by lane masks, or for 64
  filters the filters in the lanes (``rules.outer_forward``); the input
  gradient the same loops over dy, the weight gradient channel-taps ×
  filters in the lanes); the forward pass of strided layers of one group
  with at most 64 channels and filters that fill whole vectors
  (``rules.outer_applies``, ``rules.outer_pays``: ResNets' downsampling
  3×3 and 1×1 layers, the 7×7 and 11×11 stems) by the same filters-in-the-
  lanes loops, each output position's inputs a strided window of the
  padded planes (faster than unfolding ResNet-20's, whose GEMMs have
  K of 144-288; with 128 channels and more, each block of filters reading
  every input again loses), their gradients unfolded as below; direct loops for thin groups
  (``rules.depthwise``); stride 1 with up to 128 channels and short
  padding (``rules.tap_gemms``) as one GEMM per kernel tap reading the
  padded input in place, no column matrix (faster than unfolding on
  narrow layers; with more channels a tap's GEMM is too short for its
  weights); else unfold + GEMM — in groups of a few samples
  with the GEMMs called from the kernel (``blas``; ``rules.sample_group``:
  columns up to ``GROUP_COLS_BYTES``, a core's L2) where numpy's BLAS
  exports a CBLAS GEMM and the layer has no more filters than a group has
  output positions (``rules.group_gemms``: each group's GEMMs read all the
  weights and its weight-gradient slot, which for ResNet-18's 512×7×7
  layers at batch 8 outweighs the group's columns), else in chunks of up
  to ``CONV_COLS_BUDGET_BYTES`` of columns with numpy's GEMMs (split into
  slabs over the threads) between kernels. Whole padded rows when
  ``rules.flat_rows``, the weight gradient by direct dot products when
  ``rules.direct_weights`` (flat rows only); in chunks, the weight-gradient
  GEMM transposed when ``rules.dw_transposed`` (in groups, always).
* **maxpool**: ``pool.maxpool2d_*``. **avgpool**: ``pool.tile_avgpool_*``
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
* The network's first conv computes no input gradient in a fast network.

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
