"""Regions of tokens: the parts of a captured graph that leave the NCHW image layout (a reshape to tokens, window
partitions, attention within windows, window reverse, ``torch.roll``; Swin-style transformers) and come back to an
image. Each region becomes one operation of the plan (:class:`Region`), with an exact geometry:

- :func:`wrap_regions` finds them: every node that moves an image's pixels out of their place (a view, reshape,
  permutation, roll) or mixes tokens (``linear``, a matrix product, softmax, layer norm), grown through every node
  that reads one, until image-shaped results that only image operations read; every node on a path between two
  nodes of a region joins it. A region has one output image, and reads images (and constants).
- its geometry comes from the dependency boxes of its output (:mod:`.boxes`): the box of input pixels each output
  pixel depends on, computed once at the captured shape. What an intervention on a box can change, and what a box
  of the output reads, follow exactly (pixel by pixel, a window of attention whole, a shifted window wrapping around
  the image's border).
- it runs on its whole input (the baseline with the intervention's changes written in), with every intervention of
  a group at once (``torch.func.vmap`` over the region's batch-1 graph), and its output is cut to the box asked
  for. Outside the region every operation still runs on its boxes.

A region every output pixel of which depends on the whole image is refused as global, naming the node where it
became so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx

from .boxes import BoxInterpreter, _name, _shape, pixels
from .capture import GlobalOp, Refused
from .geometry import EMPTY, Box, _Bound

#: Operations that move an image's pixels out of their NCHW place, or mix tokens: a region starts at each.
_LAYOUT = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "roll", "movedim", "moveaxis",
           "swapaxes", "swapdims", "unfold", "squeeze", "unsqueeze", "expand", "repeat", "linear", "matmul", "bmm",
           "softmax", "layer_norm", "einsum", "scaled_dot_product_attention", "normalize", "t"}


def _is_layout(gm, n) -> bool:
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        return isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Softmax, torch.nn.Flatten,
                              torch.nn.Unflatten, torch.nn.MultiheadAttention))
    return n.op in ("call_method", "call_function") and _name(n) in _LAYOUT


def _image(n, grids: set) -> bool:
    s = _shape(n)
    return s is not None and len(s) == 4 and s[0] == 1 and (s[2], s[3]) in grids


class Region:
    """A region of a captured graph as one operation: ``gm`` takes its image inputs (the first ``n_images``
    arguments) and constants, and returns its output image. ``maps[j]``: per output pixel, the box of image input
    ``j``'s pixels it depends on, as four arrays (y0, y1, x0, x1; empty where y0 > y1)."""

    __name__ = "region"

    def __init__(self, gm, n_images: int, names: list[str], first: str, last: str):
        self.gm, self.n_images, self.names, self.first, self.last = gm, n_images, names, first, last
        self.maps: list[np.ndarray] = []
        self.batched = True  # runs the interventions of a group at once (vmap) until an operation refuses to

    def __call__(self, *args):
        return self.gm(*args)

    def describe(self) -> str:
        return f"the region of tokens from {self.first} to {self.last} ({len(self.names)} nodes)"

    def analyse(self, consts: dict[str, Any], image_shapes: list[tuple[int, ...]]) -> None:
        """Compute :attr:`maps` (the constants' values by placeholder name). Raises :class:`GlobalOp` when every
        output pixel depends on the whole of its inputs."""
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        full_everywhere = True
        where = None
        for j in range(self.n_images):
            shape = image_shapes[j]
            it = BoxInterpreter(self.gm, {placeholders[j].name: pixels(shape)}, consts, (shape[-2], shape[-1]))
            with torch.no_grad():
                p = it.run()
            if p is None or not isinstance(p, torch.Tensor) or p.ndim != 5:
                raise Refused(f"{self.describe()}: its output is not an image (1, C, h, w)")
            m = p.amin(dim=(1, 2))  # every channel of a pixel
            y0, y1, x0, x1 = m[0], -m[1], m[2], -m[3]
            self.maps.append(np.stack([y0.numpy(), y1.numpy(), x0.numpy(), x1.numpy()]))
            H, W = shape[-2], shape[-1]
            full = bool(((y0 <= 0) & (y1 >= H) & (x0 <= 0) & (x1 >= W)).all())
            full_everywhere &= full
            where = where or it.first_full
        if full_everywhere:
            raise GlobalOp(f"{self.describe()}: every pixel of its output depends on the whole image (global from "
                           f"{where or 'its start'})")


class RegionGeometry(_Bound):
    """The geometry of a :class:`Region` node: boxes map through its dependency maps; it runs on whole inputs."""

    whole = True  # computes its whole output, whatever box is asked for

    def __init__(self, n, deps: list, region: Region):
        super().__init__(n, deps, region)
        self.region = region

    def fwd_box(self, j, b, hw_in, hw_out) -> Box:
        y0, y1, x0, x1 = self.region.maps[j]
        hit = (y0 < b[1]) & (y1 > b[0]) & (x0 < b[3]) & (x1 > b[2]) & (y0 < y1)
        rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
        if not rows.size:
            return EMPTY
        return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)

    def bwd_box(self, j, b, hw_in, hw_out) -> Box:
        y0, y1, x0, x1 = (m[b[0]: b[1], b[2]: b[3]] for m in self.region.maps[j])
        keep = y0 < y1
        if not keep.any():
            return EMPTY
        return (int(y0[keep].min()), int(y1[keep].max()), int(x0[keep].min()), int(x1[keep].max()))

    def read_box(self, j, b, hw_in, hw_out) -> Box:
        return (0, hw_in[0], 0, hw_in[1])

    def fwd(self, j, r, n_in, n_out, axis):  # boxes only (fwd_box, bwd_box)
        raise NotImplementedError

    bwd = fwd

    def run(self, ins, out, reads):
        from ..engine.runner import is_oom

        images = [ins[self.pos[a]].clone() for a in self.n.args[: self.region.n_images]]
        consts = [self.resolve(a) if isinstance(a, torch.fx.Node) else a for a in self.n.args[self.region.n_images:]]
        gm, y = self.region.gm, None
        n = images[0].shape[0]
        if self.region.batched:
            # in chunks: a region's activations per image are its whole maps, and a large stack of them runs slower
            # per image than several small ones
            step = max(1, REGION_CHUNK_ELEMENTS // max(1, sum(x[:1].numel() for x in images)))
            try:
                batched = torch.func.vmap(lambda *xs: gm(*xs, *consts))
                y = torch.cat([batched(*[x[i: i + step].unsqueeze(1) for x in images]).squeeze(1)
                               for i in range(0, n, step)])
            except Exception as exc:  # noqa: BLE001 - an operation vmap does not batch: one at a time from now on
                self.region.batched = is_oom(exc)
        if y is None:
            y = torch.cat([gm(*[x[i: i + 1] for x in images], *consts) for i in range(n)])
        return y[..., out[0]: out[1], out[2]: out[3]]


#: How many input elements (summed over a region's input images) one batched call of a region takes at most.
REGION_CHUNK_ELEMENTS = 1 << 20


def wrap_regions(gm) -> list[Region]:
    """Replace every region of ``gm`` (a captured graph, whose nodes know their shapes) by one
    :class:`Region` node; returns them (not yet analysed: see :func:`analyse_regions`). Raises :class:`Refused`
    for a region this cannot wrap (several outputs, an input that is not an image)."""
    graph = gm.graph
    nodes = list(graph.nodes)
    order = {n: k for k, n in enumerate(nodes)}
    spatial: set = set()
    for n in nodes:
        if n.op == "placeholder" or (n.op != "output" and any(a in spatial for a in n.all_input_nodes)):
            spatial.add(n)
    seeds = [n for n in nodes if n in spatial and n.op != "placeholder" and _is_layout(gm, n)]
    if not seeds:
        return []
    grids = {tuple(_shape(a)[-2:]) for s in seeds for a in s.all_input_nodes
             if a in spatial and _shape(a) is not None and len(_shape(a)) == 4 and _shape(a)[0] == 1}
    R = set(seeds)
    while True:
        stack = list(R)
        while stack:
            r = stack.pop()
            leaves = _image(r, grids)
            for u in r.users:
                if u.op == "output" or u in R or (leaves and not _is_layout(gm, u)):
                    continue
                R.add(u)
                stack.append(u)
        extra = (_closure(R, lambda n: n.users) & _closure(R, lambda n: n.all_input_nodes)) - R
        if not extra:
            break
        R |= extra
    regions = []
    for comp in _components(R):
        regions.append(_wrap(gm, sorted(comp, key=order.__getitem__), spatial))
    graph.lint()
    return regions


def _closure(R: set, step) -> set:
    seen, stack = set(), list(R)
    while stack:
        for m in step(stack.pop()):
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def _components(R: set) -> list[set]:
    left, out = set(R), []
    while left:
        comp, stack = set(), [left.pop()]
        while stack:
            n = stack.pop()
            comp.add(n)
            for m in list(n.users) + n.all_input_nodes:
                if m in left:
                    left.discard(m)
                    stack.append(m)
        out.append(comp)
    return out


def _wrap(gm, members: list, spatial: set) -> Region:
    graph = gm.graph
    inside = set(members)
    exits = [n for n in members if any(u not in inside for u in n.users)]
    first, last = members[0].name, members[-1].name
    if len(exits) != 1:
        raise Refused(f"the region of tokens from {first} to {last} gives {len(exits)} results "
                      f"({', '.join(e.name for e in exits) or 'none'}); one output image is supported")
    out = exits[0]
    external = []
    for n in members:
        for a in n.all_input_nodes:
            if a not in inside and a not in external:
                external.append(a)
    images = [a for a in external if a in spatial]
    consts = [a for a in external if a not in spatial and a.op != "get_attr"]
    for a in images:
        s = _shape(a)
        if a.op != "placeholder" and (s is None or len(s) != 4 or s[0] != 1):
            raise Refused(f"the region of tokens from {first} to {last} reads {a.name} of shape {s}, not an image "
                          "(1, C, h, w)")
    s = _shape(out)
    if s is None or len(s) != 4 or s[0] != 1:
        raise Refused(f"the region of tokens from {first} to {last} gives {out.name} of shape {s}, not an image")
    sub = torch.fx.Graph()
    env: dict = {}
    for a in images + consts:
        env[a] = sub.placeholder(a.name)
        env[a].meta = dict(a.meta)
    for a in external:
        if a.op == "get_attr":
            env[a] = sub.node_copy(a, lambda m: env[m])
    for n in members:
        env[n] = sub.node_copy(n, lambda m: env[m])
    sub.output(env[out])
    region = Region(torch.fx.GraphModule(gm, sub), len(images), [n.name for n in members], first, last)
    users = [u for u in out.users if u not in inside]
    order = {n: k for k, n in enumerate(graph.nodes)}  # with the regions wrapped before this one
    at = min(users, key=order.__getitem__)
    if any(order[a] > order[at] for a in images + consts):
        raise Refused(f"the region of tokens from {first} to {last} reads a value computed after its output is read")
    with graph.inserting_before(at):
        node = graph.call_function(region, tuple(images + consts))
    node.meta = dict(out.meta)
    spatial.add(node)
    for u in users:
        u.replace_input_with(out, node)
    for n in reversed(members):
        graph.erase_node(n)
    return region
