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

On a GPU (``--device cuda``) the module's tensors live on the device instead:
before every pass the parameters (and running statistics) are copied there from
cnncli's arrays, and after it the gradients (and the running statistics) come
back, so the optimizer, checkpoints and the rest stay as on the CPU. The copies
are the same code on any device: the tests run them on the CPU (``mirror``),
where they must give the bits the shared tensors give.

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
    """What training needs of a :class:`~cnncli.engine.network.Network`, computed by PyTorch (on the CPU or a GPU)."""

    def __init__(self, graph: Graph, infer_graph: Graph, name: str, dtype: str | np.dtype = "float32",
                 seed: int = 0, threads: int | None = None, group: Group | None = None, device: str = "cpu",
                 mirror: bool | None = None):
        """``graph``: the training graph (auxiliary heads included); ``infer_graph``: the same without them;
        ``name``: the model's; ``group``: this process's place in a data-parallel group
        (:mod:`cnncli.exchange.torch_distributed`), None for a one-process run; ``device``: ``cpu`` or
        ``cuda`` (the group's local rank picks the GPU); ``mirror``: copy the arrays to the device and back
        every pass rather than share them (None: on any device but the CPU)."""
        torch = torch_module.require(torch_module.ENGINE)
        self.torch = torch
        self.group = group
        if device == "cuda":
            self.device = torch.device("cuda", group.local_rank if group else torch.cuda.current_device())
            torch.cuda.set_device(self.device)  # before the group forms: NCCL binds a process to its GPU
        else:
            self.device = torch.device(device)
        self.mirror = self.device.type != "cpu" if mirror is None else mirror
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
        if self.device.type == "cuda":
            where = f"GPU {torch.cuda.get_device_name(self.device)}"
            where = f"{group.world} GPUs, one per process; this one {where}" if group else where
        else:
            where = f"the CPU ({group.world} processes of {threads_} each)" if group else f"the CPU ({threads_})"
        self.description = (f"PyTorch {torch.__version__} runs the passes on {where}; data, loss, "
                            "optimizer and checkpoints are cnncli's")
        self._modules: dict[tuple, object] = {}
        #: Per module, in mirror mode: (tensor on the device, cnncli's array as PyTorch lays it out, is a buffer).
        self._links: dict[tuple, list] = {}

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
            # Every tensor of the module on the device (its own constant buffers too), then ours in place of its
            # parameters and running statistics.
            module.to(device=self.device if self.mirror else None, dtype=getattr(torch, self.dtype.name))
            links = []

            def place(array: np.ndarray, buffer: bool):
                host = torch.from_numpy(array)
                if not self.mirror:
                    return host
                tensor = torch.empty_like(host, device=self.device)  # the host's strides: the same GEMMs
                links.append((tensor, host, buffer))
                return tensor

            with torch.no_grad():
                for name, p in module.named_parameters():
                    array = self.params[name]
                    p.data = place(array.T if name in self.transposed else array, False)
                for mod_name, mod in module.named_modules():
                    for buf in ("running_mean", "running_var"):
                        if getattr(mod, buf, None) is not None:
                            setattr(mod, buf, place(self.buffers[f"{mod_name}.{buf}"], True))
            self._modules[key], self._links[key] = module, links
        module = self._modules[key]
        with self.torch.no_grad():
            for tensor, host, _ in self._links[key]:  # mirror mode: cnncli's arrays as they are now
                tensor.copy_(host)
        return module

    def _download_buffers(self, graph: Graph, returns: tuple[str, ...]) -> None:
        """Mirror mode: the running statistics a training pass updated on the device, back into cnncli's arrays."""
        for tensor, host, buffer in self._links[(id(graph), returns)]:
            if buffer:
                host.copy_(tensor)

    def _tensor(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype=self.dtype)).to(self.device)

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
        modules = dict(module.named_modules())
        for node in self.graph.nodes:
            if node.frozen and node.kind == "batchnorm":
                modules[node.name].eval()  # its running statistics, as cnncli's engine (cnncli.records.freeze)
        for p in module.parameters():
            p.grad = None
        k = len(x)
        rows = self.group.shard(k) if self.group else slice(0, k)
        total = 0.0
        if rows.stop > rows.start:
            outs = module(self._tensor(x[rows]))
            # A shard's loss gradient counts its share of the batch, so that the sum over shards is the batch mean.
            share = (rows.stop - rows.start) / k
            seeds = []
            for out, weight in zip(outs, heads.values()):
                value, grad = loss.fn(out.detach().cpu().numpy(), target[rows])
                total += weight * value * share
                seeds.append(self._tensor(weight * share * grad))
            torch.autograd.backward(outs, seeds)
            main = outs[0].detach().cpu().numpy()
        else:
            # A batch smaller than the group leaves this process no rows: it adds nothing to the sums.
            for p in module.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            main = np.zeros((0, *self.graph[sources[0]].out_shape), dtype=self.dtype)
        named = [(key, p) for key, p in module.named_parameters() if p.grad is not None]  # fixed layers have none
        if self.group is not None:
            total, main = self._sum_over_group(named, total, main, k, rows)
        if self.mirror and train:
            self._download_buffers(self.graph, sources)
        self.grads = {}
        for key, p in named:
            g = p.grad.cpu().numpy()
            self.grads[key] = g.T if key in self.transposed else g
        self.passes += 1
        return total, main

    def _sum_over_group(self, named, total: float, main: np.ndarray, k: int, rows: slice):
        """One all_reduce of every gradient, the loss and the batch's outputs (each shard fills its rows)."""
        torch = self.torch
        outputs = torch.zeros((k, *main.shape[1:]), dtype=getattr(torch, self.dtype.name), device=self.device)
        outputs[rows] = self._tensor(main)
        parts = [p.grad.reshape(-1) for _, p in named] + [torch.tensor([total], dtype=outputs.dtype,
                                                                       device=self.device), outputs.reshape(-1)]
        flat = torch.cat(parts)
        self.group.sum(flat)
        at = 0
        for _, p in named:
            n = p.grad.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n
        total = float(flat[at])
        return total, flat[at + 1:].reshape(outputs.shape).cpu().numpy().copy()

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
                (out,) = module(self._tensor(x))
                parts.append(out.cpu().numpy().copy())
        if not parts:
            return np.empty((0, *self.infer_graph[source].out_shape), dtype=self.dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        self._modules.clear()
        self._links.clear()
        if self.group is not None:
            self.group.leave()
