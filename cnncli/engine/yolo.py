"""The yolo detection head: what its numbers mean, its targets, its loss with gradient, and the boxes it finds.

**Layout.** A ``yolo`` layer passes on the map ``t`` (N, 5B + C, S_h, S_w) that the layer before it makes (the raw
head, which ``export`` writes too). In the cell of row ``i`` and column ``j``, box ``b`` reads channels ``5b .. 5b+4``
as ``(tx, ty, tw, th, to)``; channels ``5B .. 5B+C-1`` are the cell's class scores (one class distribution a cell,
as in the paper).

**Decoding** (σ the logistic function; sizes as fractions of the input, to pixels by its width W and height H)::

    cx = (j + σ(tx)) / S_w        cy = (i + σ(ty)) / S_h
    w  = σ(tw)²,  h = σ(th)²                  the paper's boxes: the net predicts √w and √h, so that an error
                                              weighs more on a small box than on a big one
    w  = a_w·exp(tw) / S_w, h = a_h·exp(th) / S_h    with ``anchors`` (YOLOv2): priors a in grid cells
    objectness p = σ(to);  class probabilities q = softmax of the C scores
    score of class c = p · q_c                (the paper's class-specific confidence)

**Targets.** :func:`encode` turns a batch's :class:`~cnncli.engine.boxes.Boxes` into an array shaped as the head,
(N, 5B + C, S_h, S_w), so that the network splits and ships it as any per-sample target. An object belongs to the
cell holding its centre; a cell holds at most B objects, bigger first (the rest are dropped, and counted). Slot ``b``
of a cell holds ``(x̂, ŷ)``, the centre's offset in the cell in [0, 1), ``(ŵ, ĥ)``, the size as a fraction of the
input, and 1 at channel ``5b + 4``; the class channels hold the cell's objects' classes, 1/m each for m objects.
With anchors an object goes to the slot of the anchor closest to it in shape (the highest IoU of the two sizes laid
on one centre), as in YOLOv2; of two objects for one slot the bigger stays.

**Responsibility.** With anchors, box ``b`` answers for slot ``b``. Without, the paper's rule: the box "whose
current prediction has the highest IoU with the ground truth" is responsible; in a cell the (object, box) pair of
highest IoU is matched first, then the best pair of the rest, so that each box answers for one object at most.

**Loss** of an image (summed; the batch's is the mean over images, as every cnncli loss)::

    coord · Σ_resp [(σ(tx) − x̂)² + (σ(ty) − ŷ)² + (σ(tw) − √ŵ)² + (σ(th) − √ĥ)²]
                     with anchors the sizes' terms are (tw − ln(ŵ S_w / a_w))² + (th − ln(ĥ S_h / a_h))²
  + obj   · Σ_resp  (σ(to) − ĉ)²       ĉ: the IoU of the box with its object, held fixed (the paper's target),
                                        or 1 without ``rescore``
  + noobj · Σ_other σ(to)²             every box responsible for nothing
  + cls   · Σ_cells with objects −Σ_c ŷ_c ln q_c     the cross-entropy of the softmax (the paper used the squared
                                                     error of the probabilities; cross-entropy trains faster)

The weights are the head's options (``coord: 5`` and ``noobj: 0.5`` as in the paper). :func:`loss` gives the value,
the gradient with respect to the head's input and each term; ``tests/test_yolo.py`` checks the gradient against
finite differences (with ĉ and the matching held as at the point, which is what the gradient is of).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncli.engine.boxes import Boxes
from cnncli.engine.elementwise import log_softmax, sigmoid, softmax
from cnncli.model.graph import output_classes

__all__ = ["Head", "Responsible", "Terms", "TERMS", "decode", "encode", "loss", "responsibility", "responsible"]

#: The loss's terms, in the order tables show them.
TERMS = ("coord", "obj", "noobj", "cls")
#: It finds any number of objects an image.
ONE_OBJECT = False


@dataclass(frozen=True)
class Head:
    """A yolo head's settings: ``boxes`` (B) a cell, ``classes`` (C), its ``grid`` (S_h, S_w), ``anchors`` (B, 2) in
    grid cells or None, and the loss's weights (module docstring)."""

    boxes: int
    classes: int
    grid: tuple[int, int]
    anchors: tuple[tuple[float, float], ...] | None = None
    coord: float = 5.0
    obj: float = 1.0
    noobj: float = 0.5
    cls: float = 1.0
    rescore: bool = True

    @classmethod
    def of(cls, node) -> Head:
        """The head a graph's ``yolo`` node (:class:`cnncli.model.graph.Node`) describes."""
        o = node.options
        _, sh, sw = node.out_shape
        return cls(o["boxes"], output_classes(node), (sh, sw), o["anchors"], o["coord"], o["obj"], o["noobj"],
                   o["cls"], o["rescore"])

    @property
    def channels(self) -> int:
        return 5 * self.boxes + self.classes


@dataclass(frozen=True)
class Terms:
    """A batch's loss by term (each a mean over images) and how many objects found no slot (:func:`encode`)."""

    coord: float
    obj: float
    noobj: float
    cls: float

    @property
    def total(self) -> float:
        return self.coord + self.obj + self.noobj + self.cls

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TERMS}


def _size_iou(w0, h0, w1, h1) -> np.ndarray:
    """IoU of boxes of sizes (w0, h0) and (w1, h1) laid on one centre (broadcasting)."""
    inter = np.minimum(w0, w1) * np.minimum(h0, h1)
    union = w0 * h0 + w1 * h1 - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _centred_iou(cx0, cy0, w0, h0, cx1, cy1, w1, h1) -> np.ndarray:
    """IoU of boxes given by centre and size (broadcasting); 0 when both are empty."""
    iw = np.clip(np.minimum(cx0 + w0 / 2, cx1 + w1 / 2) - np.maximum(cx0 - w0 / 2, cx1 - w1 / 2), 0, None)
    ih = np.clip(np.minimum(cy0 + h0 / 2, cy1 + h1 / 2) - np.maximum(cy0 - h0 / 2, cy1 - h1 / 2), 0, None)
    inter = iw * ih
    union = w0 * h0 + w1 * h1 - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def encode(boxes: Boxes, head: Head, size: tuple[int, int], dtype=np.float32) -> tuple[np.ndarray, int]:
    """The target of a batch: ``boxes`` (N images; xyxy pixels of an input of ``size`` = (H, W)) → (target (N, 5B + C,
    S_h, S_w), objects dropped because their cell's slots were taken). See the module docstring."""
    n = len(boxes)
    b, sh, sw = head.boxes, *head.grid
    height, width = size
    target = np.zeros((n, head.channels, sh, sw), dtype=dtype)
    slots = target[:, :5 * b].reshape(n, b, 5, sh, sw)
    classes = target[:, 5 * b:]
    xyxy = boxes.xyxy.astype(np.float64)
    w = (xyxy[:, 2] - xyxy[:, 0]) / width
    h = (xyxy[:, 3] - xyxy[:, 1]) / height
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2 / width * sw
    cy = (xyxy[:, 1] + xyxy[:, 3]) / 2 / height * sh
    col = np.clip(np.floor(cx).astype(np.int64), 0, sw - 1)
    row = np.clip(np.floor(cy).astype(np.int64), 0, sh - 1)
    image = np.repeat(np.arange(n), boxes.counts)
    keep = (w > 0) & (h > 0) & (boxes.classes >= 0) & (boxes.classes < head.classes)
    # Bigger objects first: they take the slots when there are more objects than slots.
    order = [k for k in np.argsort(-(w * h), kind="stable") if keep[k]]
    if head.anchors is not None:
        a = np.asarray(head.anchors, dtype=np.float64)
        best = np.argmax(_size_iou(w[:, None] * sw, h[:, None] * sh, a[None, :, 0], a[None, :, 1]), axis=1)
    taken: dict[tuple[int, int, int], int] = {}
    in_cell: dict[tuple[int, int, int], list[int]] = {}
    dropped = int(np.count_nonzero(~keep))
    for k in order:
        cell = (int(image[k]), int(row[k]), int(col[k]))
        used = taken.get(cell, 0)
        if head.anchors is not None:
            slot = int(best[k])
            if used >> slot & 1:
                dropped += 1
                continue
        else:
            if used.bit_count() >= b:
                dropped += 1
                continue
            slot = used.bit_count()
        taken[cell] = used | 1 << slot
        in_cell.setdefault(cell, []).append(int(boxes.classes[k]))
        i, r, c = cell
        slots[i, slot, :, r, c] = (cx[k] - col[k], cy[k] - row[k], w[k], h[k], 1.0)
    for (i, r, c), found in in_cell.items():
        for cls in found:
            classes[i, cls, r, c] += 1.0 / len(found)
    return target, dropped


def _predicted(t: np.ndarray, head: Head) -> dict[str, np.ndarray]:
    """The boxes of a head's map t (N, 5B + C, S_h, S_w): σ of x, y, objectness (and of w, h without anchors), and
    the boxes' centres and sizes as fractions of the input, each (N, B, S_h, S_w)."""
    n, _, sh, sw = t.shape
    b = head.boxes
    p = t[:, :5 * b].reshape(n, b, 5, sh, sw).astype(np.float64)
    s = sigmoid(p)
    cols = np.arange(sw)[None, None, None, :]
    rows = np.arange(sh)[None, None, :, None]
    if head.anchors is None:
        w, h = s[:, :, 2] ** 2, s[:, :, 3] ** 2
    else:
        a = np.asarray(head.anchors, dtype=np.float64)
        w = a[None, :, 0, None, None] * np.exp(np.minimum(p[:, :, 2], 30)) / sw
        h = a[None, :, 1, None, None] * np.exp(np.minimum(p[:, :, 3], 30)) / sh
    return {"raw": p, "s": s, "cx": (cols + s[:, :, 0]) / sw, "cy": (rows + s[:, :, 1]) / sh, "w": w, "h": h}


def _responsible(pred: dict[str, np.ndarray], slots: np.ndarray, head: Head) -> np.ndarray:
    """For each box (N, B, S_h, S_w): the slot of the object it answers for, or −1 (module docstring)."""
    n, b, _, sh, sw = slots.shape
    present = slots[:, :, 4] > 0                                      # (N, B slots, S_h, S_w)
    if head.anchors is not None:
        return np.where(present, np.arange(b)[None, :, None, None], -1)
    owner = np.full((n, b, sh, sw), -1, dtype=np.int64)
    cells = np.nonzero(present.any(axis=1))                           # cells with objects: (image, row, col)
    if not len(cells[0]):
        return owner
    i, r, c = cells
    cols, rows = c.astype(np.float64), r.astype(np.float64)
    g = slots[i, :, :, r, c].astype(np.float64)                        # (cells, B slots, 5)
    gcx, gcy = (cols[:, None] + g[:, :, 0]) / sw, (rows[:, None] + g[:, :, 1]) / sh
    pcx, pcy = pred["cx"][i, :, r, c], pred["cy"][i, :, r, c]          # (cells, B boxes)
    pw, ph = pred["w"][i, :, r, c], pred["h"][i, :, r, c]
    iou = _centred_iou(gcx[:, :, None], gcy[:, :, None], g[:, :, 2, None], g[:, :, 3, None],
                       pcx[:, None, :], pcy[:, None, :], pw[:, None, :], ph[:, None, :])  # (cells, slots, boxes)
    iou = np.where(g[:, :, 4, None] > 0, iou, -np.inf)
    cell_owner = np.full((len(i), b), -1, dtype=np.int64)
    for _ in range(b):
        flat = iou.reshape(len(i), -1).argmax(axis=1)
        slot, box = np.divmod(flat, b)
        ok = np.isfinite(iou[np.arange(len(i)), slot, box])
        cell_owner[np.nonzero(ok)[0], box[ok]] = slot[ok]
        iou[np.nonzero(ok)[0], slot[ok], :] = -np.inf
        iou[np.nonzero(ok)[0], :, box[ok]] = -np.inf
    owner[i, :, r, c] = cell_owner
    return owner


def loss(t: np.ndarray, target: np.ndarray, head: Head, fixed: tuple[np.ndarray, np.ndarray] | None = None
         ) -> tuple[float, np.ndarray, Terms]:
    """The yolo loss of a head's map ``t`` (N, 5B + C, S_h, S_w) against :func:`encode`'s ``target``: (value, ∂/∂t of
    t's shape and dtype, the value by term). ``fixed``: the responsibility (owner slots, (N, B, S_h, S_w)) and the
    objectness targets ĉ to use instead of those at ``t`` (:func:`responsibility`; the finite-difference check holds
    them)."""
    n, _, sh, sw = t.shape
    b = head.boxes
    slots = target[:, :5 * b].reshape(n, b, 5, sh, sw).astype(np.float64)
    pred = _predicted(t, head)
    owner, c_hat = fixed if fixed is not None else responsibility(t, target, head, pred)
    resp = owner >= 0
    # Each box's object: the slot it answers for, gathered to the box's place.
    g = np.take_along_axis(slots, np.maximum(owner, 0)[:, :, None], axis=1)   # (N, B, 5, S_h, S_w)
    s, raw = pred["s"], pred["raw"]
    grad_p = np.zeros_like(raw)
    ds = s * (1 - s)                                                          # σ'
    # coordinates
    dx, dy = s[:, :, 0] - g[:, :, 0], s[:, :, 1] - g[:, :, 1]
    if head.anchors is None:
        dw = s[:, :, 2] - np.sqrt(g[:, :, 2])
        dh = s[:, :, 3] - np.sqrt(g[:, :, 3])
        size_grad = (dw * ds[:, :, 2], dh * ds[:, :, 3])
    else:
        a = np.asarray(head.anchors, dtype=np.float64)
        tiny = np.finfo(np.float64).tiny
        dw = raw[:, :, 2] - np.log(np.maximum(g[:, :, 2] * sw / a[None, :, 0, None, None], tiny))
        dh = raw[:, :, 3] - np.log(np.maximum(g[:, :, 3] * sh / a[None, :, 1, None, None], tiny))
        dw, dh = np.where(resp, dw, 0), np.where(resp, dh, 0)
        size_grad = (dw, dh)
    coord = head.coord * np.sum(resp * (dx * dx + dy * dy + dw * dw + dh * dh))
    grad_p[:, :, 0] = 2 * head.coord * resp * dx * ds[:, :, 0]
    grad_p[:, :, 1] = 2 * head.coord * resp * dy * ds[:, :, 1]
    grad_p[:, :, 2] = 2 * head.coord * resp * size_grad[0]
    grad_p[:, :, 3] = 2 * head.coord * resp * size_grad[1]
    # objectness
    so = s[:, :, 4]
    do = so - c_hat
    obj = head.obj * np.sum(resp * do * do)
    noobj = head.noobj * np.sum(~resp * so * so)
    grad_p[:, :, 4] = (2 * head.obj * resp * do + 2 * head.noobj * ~resp * so) * ds[:, :, 4]
    # classes
    y = target[:, 5 * b:].astype(np.float64)
    has = y.sum(axis=1, keepdims=True)                                         # 1 in cells with objects, else 0
    log_q = log_softmax(t[:, 5 * b:].astype(np.float64))
    cls = -head.cls * np.sum(y * log_q)
    grad_c = head.cls * (np.exp(log_q) * has - y)
    grad = np.concatenate([grad_p.reshape(n, 5 * b, sh, sw), grad_c], axis=1) / max(n, 1)
    terms = Terms(*(float(v) / max(n, 1) for v in (coord, obj, noobj, cls)))
    return terms.total, grad.astype(t.dtype, copy=False), terms


def responsibility(t: np.ndarray, target: np.ndarray, head: Head, pred: dict | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Which slot each box of ``t`` answers for (N, B, S_h, S_w; −1: none) and its objectness target ĉ (the IoU of
    the box with that object, or 1 without ``rescore``; 0 where it answers for none)."""
    n, _, sh, sw = t.shape
    b = head.boxes
    pred = pred if pred is not None else _predicted(t, head)
    slots = target[:, :5 * b].reshape(n, b, 5, sh, sw).astype(np.float64)
    owner = _responsible(pred, slots, head)
    resp = owner >= 0
    if not head.rescore:
        return owner, resp.astype(np.float64)
    g = np.take_along_axis(slots, np.maximum(owner, 0)[:, :, None], axis=1)
    cols = np.arange(sw)[None, None, None, :]
    rows = np.arange(sh)[None, None, :, None]
    iou = _centred_iou(pred["cx"], pred["cy"], pred["w"], pred["h"],
                       (cols + g[:, :, 0]) / sw, (rows + g[:, :, 1]) / sh, g[:, :, 2], g[:, :, 3])
    return owner, np.where(resp, iou, 0.0)


def decode(t: np.ndarray, head: Head, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every box of a head's map t (N, 5B + C, S_h, S_w), before any threshold: xyxy pixels of an input of ``size``
    (H, W), (N, B·S_h·S_w, 4); the score of its best class p·max q (N, B·S_h·S_w); that class (N, B·S_h·S_w)."""
    n, _, sh, sw = t.shape
    height, width = size
    pred = _predicted(t, head)
    q = softmax(t[:, 5 * head.boxes:].astype(np.float64))                     # (N, C, S_h, S_w)
    best = q.argmax(axis=1)
    q_best = q.max(axis=1)
    score = pred["s"][:, :, 4] * q_best[:, None]                               # (N, B, S_h, S_w)
    cx, cy, w, h = pred["cx"] * width, pred["cy"] * height, pred["w"] * width, pred["h"] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)  # (N, B, S_h, S_w, 4)
    xyxy = np.clip(xyxy, 0, [width, height, width, height])
    classes = np.broadcast_to(best[:, None], score.shape)
    return xyxy.reshape(n, -1, 4), score.reshape(n, -1), classes.reshape(n, -1)


@dataclass(frozen=True)
class Responsible:
    """One box answering for an object (:func:`responsibility`), and what it costs: in image ``image``, cell
    (``row``, ``col``), box ``box`` for the object in slot ``slot``; the object's and the box's centre and size as
    fractions of the input (cx, cy, w, h); their IoU, the objectness p = σ(to) and its target ĉ; the coordinates'
    and the objectness's terms of the loss (weighted, of this image: not divided by the batch)."""

    image: int
    row: int
    col: int
    box: int
    slot: int
    truth: tuple[float, float, float, float]
    predicted: tuple[float, float, float, float]
    iou: float
    p: float
    c_hat: float
    coord: float
    obj: float


def responsible(t: np.ndarray, target: np.ndarray, head: Head) -> list[Responsible]:
    """Every box of ``t`` that answers for an object of ``target``, with its share of the loss (what
    ``backprop-trace`` shows of a detector); their ``coord`` and ``obj`` add up to :func:`loss`'s terms × N."""
    n, _, sh, sw = t.shape
    b = head.boxes
    pred = _predicted(t, head)
    owner, c_hat = responsibility(t, target, head, pred)
    slots = target[:, :5 * b].reshape(n, b, 5, sh, sw).astype(np.float64)
    s, raw = pred["s"], pred["raw"]
    found = []
    for i, box, r, c in zip(*np.nonzero(owner >= 0)):
        slot = int(owner[i, box, r, c])
        gx, gy, gw, gh, _ = slots[i, slot, :, r, c]
        if head.anchors is None:
            dw, dh = s[i, box, 2, r, c] - np.sqrt(gw), s[i, box, 3, r, c] - np.sqrt(gh)
        else:
            aw, ah = head.anchors[box]
            dw = raw[i, box, 2, r, c] - np.log(max(gw * sw / aw, np.finfo(np.float64).tiny))
            dh = raw[i, box, 3, r, c] - np.log(max(gh * sh / ah, np.finfo(np.float64).tiny))
        dx, dy = s[i, box, 0, r, c] - gx, s[i, box, 1, r, c] - gy
        p = float(s[i, box, 4, r, c])
        ch = float(c_hat[i, box, r, c])
        found.append(Responsible(
            int(i), int(r), int(c), int(box), slot, ((c + gx) / sw, (r + gy) / sh, gw, gh),
            tuple(float(pred[k][i, box, r, c]) for k in ("cx", "cy", "w", "h")),  # type: ignore[arg-type]
            _iou_of(pred, i, box, r, c, ((c + gx) / sw, (r + gy) / sh, gw, gh)), p, ch,
            float(head.coord * (dx * dx + dy * dy + dw * dw + dh * dh)), float(head.obj * (p - ch) ** 2)))
    return found


def _iou_of(pred: dict[str, np.ndarray], i, box, r, c, truth) -> float:
    return float(_centred_iou(pred["cx"][i, box, r, c], pred["cy"][i, box, r, c], pred["w"][i, box, r, c],
                              pred["h"][i, box, r, c], *truth))
