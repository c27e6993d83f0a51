"""Optimizers with PyTorch's update rules and saveable state.

An optimizer updates the network's parameter arrays in place from their
gradients. Its state (momentum buffers, Adam's moments, the step count) is a
flat ``{key: array}`` dict so that checkpoints store it beside the weights.
"""

from __future__ import annotations

import numpy as np

from cnncli.engine.jit import exact_kernel
from cnncli.errors import CheckpointError


class Optimizer:
    name = ""

    def __init__(self, params: dict[str, np.ndarray], lr: float, weight_decay: float = 0.0):
        self.params = params  # only the trainable ones
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = 0
        self.slots: dict[str, dict[str, np.ndarray]] = {}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.steps += 1
        for name, p in self.params.items():
            g = grads[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            self._update(name, p, g)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"optim.steps": np.array(self.steps, dtype=np.int64)}
        for name, slots in self.slots.items():
            for slot, arr in slots.items():
                state[f"optim.{slot}.{name}"] = arr
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state.get("optim.steps", 0))
        self.slots = {}
        for key, arr in state.items():
            if not key.startswith("optim.") or key == "optim.steps":
                continue
            slot, name = key[len("optim."):].split(".", 1)
            if name not in self.params:
                raise CheckpointError(f"optimizer state for '{name}', which the model does not have")
            if arr.shape != self.params[name].shape:
                raise CheckpointError(f"optimizer state '{key}' has shape {arr.shape}, "
                                      f"the parameter {self.params[name].shape}")
            self.slots.setdefault(name, {})[slot] = arr.astype(self.params[name].dtype)


@exact_kernel
def _sgd_update(p, g, v, lr, momentum, weight_decay, nesterov, first):
    # PyTorch's SGD on flat arrays, arithmetic in the parameters' dtype as numpy
    # would do it: d = g + wd·p; v = d (first step) or μ·v + d; p -= lr·(d + μ·v or v).
    t = p.dtype.type
    lr_, mu, wd = t(lr), t(momentum), t(weight_decay)
    for i in range(p.shape[0]):
        d = g[i] + wd * p[i]
        if momentum != 0.0:
            b = d if first else mu * v[i] + d
            v[i] = b
            d = d + mu * b if nesterov else b
        p[i] -= lr_ * d


class SGD(Optimizer):
    """p ← p − lr·v, v ← μ·v + g (v = g on the first step); Nesterov uses g + μ·v."""

    name = "sgd"

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.nesterov = nesterov

    def step(self, grads: dict[str, np.ndarray]) -> None:
        # One kernel pass per parameter instead of ~6 numpy passes and temporaries:
        # on LeNet-5 the optimizer step is serial work between two batch splits.
        self.steps += 1
        for name, p in self.params.items():
            v = p
            first = False
            if self.momentum:
                slots = self.slots.setdefault(name, {})
                v = slots.get("momentum")
                if v is None:
                    v = slots["momentum"] = np.empty_like(p)
                    first = True
            _sgd_update(p.reshape(-1), np.ascontiguousarray(grads[name], dtype=p.dtype).reshape(-1),
                        v.reshape(-1), self.lr, self.momentum, self.weight_decay, self.nesterov, first)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam."""

    name = "adam"

    def __init__(self, params, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, **_sgd_only):
        super().__init__(params, lr, weight_decay)
        self.b1, self.b2 = betas
        self.eps = eps

    def _update(self, name, p, g):
        slots = self.slots.setdefault(name, {})
        m = slots.setdefault("exp_avg", np.zeros_like(p))
        v = slots.setdefault("exp_avg_sq", np.zeros_like(p))
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        c1 = 1 - self.b1 ** self.steps
        c2 = 1 - self.b2 ** self.steps
        p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Adam)}


def make(name: str, params: dict[str, np.ndarray], lr: float, momentum: float = 0.0,
         nesterov: bool = False, weight_decay: float = 0.0) -> Optimizer:
    """An optimizer by name; SGD's momentum and Nesterov flags are ignored by Adam."""
    return OPTIMIZERS[name](params, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
