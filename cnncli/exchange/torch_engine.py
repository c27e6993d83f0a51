"""PyTorch as a second engine for ``train``: the model's forward and backward passes run in PyTorch.

Everything else is cnncli's, unchanged: the initial weights (drawn as the Numba
engine draws them), the data, batches and augmentation, the loss (computed on
the outputs' values, its gradient handed back to PyTorch's autograd), the
optimizer and schedule, gradient flow, checkpoints (``.npz``) and the run
folder. So one step of either engine from the same weights and batch gives the
same update within float rounding, and ``eval``, ``plot``, ``--resume`` (on
either engine) read the result as any run's.

How: the module is the one ``cnncli export --to torch`` writes
(:func:`~cnncli.exchange.torch_module.module_source`), built from that source,
and its parameters and batch-norm buffers are replaced by tensors that share
memory with cnncli's numpy arrays (a dense weight as the transposed view of
cnncli's (in, out) array). cnncli's optimizer updates the arrays in place;
PyTorch reads them at the next step and writes the running statistics into
them. Gradients come back as numpy views of ``.grad``.

Dropout draws its masks from PyTorch's generator (seeded from the run's seed),
so a dropout network's masks differ from the Numba engine's, and a resumed run
of one is not bit-identical to an uninterrupted one. Inference uses a second
module built without auxiliary heads over the same arrays.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine.network import Network
from cnncli.exchange import torch_module
from cnncli.exchange.torch_distributed import Group
from cnncli.model.graph import Graph


def _build(graph: Graph, returns: tuple[str, ...], name: str):
    """An instance of the module ``export --to torch`` writes for ``graph``, returning the nodes ``returns``."""
    source = torch_module.module_source(graph, name, "the torch engine", "", returns=returns)
    namespace: dict = {}
    exec(compile(source, f"<cnncli torch engine: {name}>", "exec"), namespace)  # our own generated source
    return namespace[torch_module.class_name(name)]()


class TorchNetwork:
    """What training needs of a :class:`~cnncli.engine.network.Network`, computed by PyTorch on the CPU."""

    def __init__(self, graph: Graph, infer_graph: Graph, name: str, dtype: str | np.dtype = "float32",
                 seed: int = 0, threads: int | None = None, group: Group | None = None):
        """``graph``: the training graph (auxiliary heads included); ``infer_graph``: the same without them;
        ``name``: the model's; ``group``: this process's place in a data-parallel group
        (:mod:`cnncli.exchange.torch_distributed`), None for a one-process run."""
        torch = torch_module.require()
        self.torch = torch
        self.group = group
        if group is not None:
            group.join()
            threads = threads or max(1, torch.get_num_threads() // group.world)
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed + 7919 * (group.rank if group else 0))  # dropout's masks, per process
        self.graph, self.infer_graph, self.name = graph, infer_graph, name
        self.base = Network(graph, dtype, seed=seed)   # owns the arrays: initial weights as cnncli draws them
        self.dtype = self.base.dtype
        self.params, self.buffers = self.base.params, self.base.buffers
        self.grads: dict[str, np.ndarray] = {}
        #: Keys laid out transposed in PyTorch (shared as transposed views); the inference graph's are a subset.
        self.transposed = torch_module.transposed(graph)
        self.passes = 0
        self.processes_failed = None
        #: For the run's header.
        n = torch.get_num_threads()
        threads_ = f"{n} thread" + ("s" if n > 1 else "")
        where = f"{group.world} processes of {threads_} each" if group else threads_
        self.description = (f"PyTorch {torch.__version__} runs the passes on the CPU ({where}); data, loss, "
                            "optimizer and checkpoints are cnncli's")
        self._modules: dict[tuple, object] = {}

    # -- the arrays cnncli owns, shared with the modules --
    def trainable(self) -> dict[str, np.ndarray]:
        return self.base.trainable()

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        self.base.load_state_dict(state, source)  # copies into the shared arrays

    def _module(self, graph: Graph, returns: tuple[str, ...]):
        key = (id(graph), returns)
        if key not in self._modules:
            torch = self.torch
            module = _build(graph, returns, self.name)
            module.to(getattr(torch, self.dtype.name))
            with torch.no_grad():
                for name, p in module.named_parameters():
                    array = self.params[name]
                    p.data = torch.from_numpy(array.T if name in self.transposed else array)
                for mod_name, mod in module.named_modules():
                    for buf in ("running_mean", "running_var"):
                        if getattr(mod, buf, None) is not None:
                            setattr(mod, buf, torch.from_numpy(self.buffers[f"{mod_name}.{buf}"]))
            self._modules[key] = module
        return self._modules[key]

    # -- passes --
    def spawn_workers(self, max_batch: int) -> None:
        """Nothing to start: PyTorch parallelises inside its operators."""

    def loss_and_backward(self, x: np.ndarray, target: np.ndarray, loss, train: bool = True,
                          keep_node_grads: bool = False) -> tuple[float, np.ndarray]:
        """Forward (training mode: batch statistics, dropout, auxiliary heads), cnncli's loss, backward."""
        torch = self.torch
        heads = {self.graph.output: 1.0, **(self.graph.aux_outputs if train else {})}
        sources = tuple(loss.source(self.graph, h) for h in heads)
        module = self._module(self.graph, sources)
        module.train(train)
        for p in module.parameters():
            p.grad = None
        k = len(x)
        rows = self.group.shard(k) if self.group else slice(0, k)
        total = 0.0
        if rows.stop > rows.start:
            outs = module(torch.from_numpy(np.ascontiguousarray(x[rows], dtype=self.dtype)))
            # A shard's loss gradient counts its share of the batch, so that the sum over shards is the batch mean.
            share = (rows.stop - rows.start) / k
            seeds = []
            for out, weight in zip(outs, heads.values()):
                value, grad = loss.fn(out.detach().numpy(), target[rows])
                total += weight * value * share
                seeds.append(torch.from_numpy(np.ascontiguousarray(weight * share * grad, dtype=self.dtype)))
            torch.autograd.backward(outs, seeds)
            main = outs[0].detach().numpy()
        else:
            # A batch smaller than the group leaves this process no rows: it adds nothing to the sums.
            for p in module.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            main = np.zeros((0, *self.graph[sources[0]].out_shape), dtype=self.dtype)
        named = [(key, p) for key, p in module.named_parameters() if p.grad is not None]  # fixed layers have none
        if self.group is not None:
            total, main = self._sum_over_group(named, total, main, k, rows)
        self.grads = {}
        for key, p in named:
            g = p.grad.numpy()
            self.grads[key] = g.T if key in self.transposed else g
        self.passes += 1
        return total, main

    def _sum_over_group(self, named, total: float, main: np.ndarray, k: int, rows: slice):
        """One all_reduce of every gradient, the loss and the batch's outputs (each shard fills its rows)."""
        torch = self.torch
        outputs = torch.zeros((k, *main.shape[1:]), dtype=getattr(torch, self.dtype.name))
        outputs[rows] = torch.from_numpy(main)
        parts = [p.grad.reshape(-1) for _, p in named] + [torch.tensor([total], dtype=outputs.dtype),
                                                         outputs.reshape(-1)]
        flat = torch.cat(parts)
        self.group.sum(flat)
        at = 0
        for _, p in named:
            n = p.grad.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n
        total = float(flat[at])
        return total, flat[at + 1:].reshape(outputs.shape).numpy().copy()

    def predict(self, images, batch_size: int, source: str | None = None, prepare=None) -> np.ndarray:
        """Inference in batches (running statistics, no dropout, no auxiliary heads)."""
        torch = self.torch
        source = source or self.infer_graph.output
        module = self._module(self.infer_graph, (source,)).eval()
        parts = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                batch = images[i:i + batch_size]
                x = batch if prepare is None else prepare(batch)
                (out,) = module(torch.from_numpy(np.ascontiguousarray(x, dtype=self.dtype)))
                parts.append(out.numpy().copy())
        if not parts:
            return np.empty((0, *self.infer_graph[source].out_shape), dtype=self.dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        self._modules.clear()
        if self.group is not None:
            self.group.leave()
