"""The plan built from a model's traced graph (:func:`build_plan`): which nodes are the input, the output,
constants or operations on the image (each with its geometry and the spatial nodes it reads), and
:class:`LocalPlan`, which computes the baseline activations, the box every node is computed on for an intervention
(its schedule) and the ROI outputs of interventions evaluated on those boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from ..engine.guard import preserved

from .capture import GlobalOp, Refused, _attr, capture, trace
from .geometry import EMPTY, Box, Geometry, _area, _empty, _inter, _union
from .ops import _INPLACE_FUNCS, _INPLACE_METHODS, _geometry
from .region import RegionGeometry, wrap_regions
from .rewrite import lift
from .shaped import shaped_trace

#: Refuse a plan whose baseline activations would take more memory than this.
MAX_BASELINE_BYTES = 2 * 1024**3


@dataclass
class _Op:
    node: Any  # torch.fx.Node
    kind: str  # "input", "const", "op", "output"
    inputs: list[int] = field(default_factory=list)  # indices of the spatial nodes it reads, in argument order
    geo: Geometry | None = None
    conv_like: bool = False


class LocalPlan:
    """A traced model ready for local evaluation (see :mod:`cem_checks.local_eval`). Build with :func:`build_plan`."""

    def __init__(self, gm, ops: list[_Op], shape: tuple[int, ...] | None = None):
        self.gm = gm
        self.ops = ops
        self.shape = shape  # the one input shape of a captured plan; None: a symbolic trace, any shape
        self.index = {op.node: i for i, op in enumerate(ops)}
        self.n_conv = sum(op.conv_like for op in ops)
        #: some operation computes its whole output whatever box is asked for (a region of tokens)
        self.has_whole = any(getattr(op.geo, "whole", False) for op in ops)
        #: ``(x, values)``: the baseline that reading the graph at its shape computed, kept for the first
        #: :class:`~.evaluation.FrameEvaluator` on that very input (see :meth:`take_baseline`)
        self.built: tuple[torch.Tensor, list[Any]] | None = None

    def take_baseline(self, x: torch.Tensor) -> list[Any] | None:
        """The baseline values computed when the plan was built, if that was on ``x`` (bit for bit, the same
        dtype and device); handed over once, then dropped."""
        built, self.built = self.built, None
        if built is None:
            return None
        bx, vals = built
        same = bx.shape == x.shape and bx.dtype == x.dtype and bx.device == x.device and torch.equal(bx, x)
        return vals if same else None

    # --------------------------------------------------------------------------- baseline activations
    def baseline(self, x: torch.Tensor) -> list[Any]:
        """Every node's value for the (1, C, h, w) input ``x``, from one pass through the traced graph with the
        model's own modules (values cloned, so in-place modules cannot alter stored ones). Raises
        :class:`Refused` when a node that depends on the input is not a batch-1 image tensor (..., h, w)."""
        env: dict[Any, Any] = {}
        vals: list[Any] = []
        total = 0
        for op in self.ops:
            n = op.node

            def load(a):
                return env[a] if isinstance(a, torch.fx.Node) else a

            args = torch.fx.node.map_aggregate(n.args, load)
            kwargs = torch.fx.node.map_aggregate(n.kwargs, load)
            if n.op == "placeholder":
                v = x.clone()
            elif n.op == "output":
                v = args[0]
            elif n.op == "get_attr":
                v = _attr(self.gm, n.target)
            elif n.op == "call_module":
                v = self.gm.get_submodule(n.target)(*args, **kwargs)
            elif n.op == "call_function":
                v = _INPLACE_FUNCS.get(n.target, n.target)(*args, **kwargs)
            else:  # call_method; in-place methods out of place
                name = n.target[:-1] if n.target in _INPLACE_METHODS else n.target
                v = getattr(args[0], name)(*args[1:], **kwargs)
            if op.kind != "const" and (not isinstance(v, torch.Tensor) or v.ndim < 3 or v.shape[0] != 1):
                shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise Refused(f"node {n.name} gives {shape}, not a batch of one image (1, ..., h, w)")
            env[n] = v
            vals.append(v.detach().clone() if isinstance(v, torch.Tensor) else v)
            total += v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0
            if total > MAX_BASELINE_BYTES:
                raise Refused(f"the baseline activations exceed {MAX_BASELINE_BYTES >> 30} GiB")
        return vals

    # --------------------------------------------------------------------------------- schedules
    def schedule(self, block: Box, roi: Box, hws: list[tuple[int, int]]) -> list[Box]:
        """The compute box of every node (its own pixels) for an intervention on ``block`` (input pixels) read at
        ``roi`` (output pixels); ``hws`` are the nodes' spatial sizes."""
        chg: list[Box] = []
        for op, (H, W) in zip(self.ops, hws):
            if op.kind == "input":
                c = _inter(block, (0, H, 0, W))
            elif op.kind == "output":
                c = chg[op.inputs[0]]
            elif op.kind == "const":
                c = EMPTY
            else:
                c = EMPTY
                for j, i in enumerate(op.inputs):
                    if _empty(chg[i]):
                        continue
                    c = _union(c, _inter(op.geo.fwd_box(j, chg[i], hws[i], (H, W)), (0, H, 0, W)))
            chg.append(c)
        comp: list[Box] = [EMPTY] * len(self.ops)
        need: list[Box] = [EMPTY] * len(self.ops)
        for k in range(len(self.ops) - 1, -1, -1):
            op = self.ops[k]
            H, W = hws[k]
            if op.kind == "output":
                comp[k] = _inter(roi, (0, H, 0, W))
                need[op.inputs[0]] = _union(need[op.inputs[0]], comp[k])
                continue
            comp[k] = _inter(need[k], chg[k])
            if op.kind != "op" or _empty(comp[k]):
                continue
            for j, i in enumerate(op.inputs):
                G = self._read(op, j, comp[k], hws[k], hws[i])
                need[i] = _union(need[i], _inter(self._hull(op, j, G, hws[i]), (0, hws[i][0], 0, hws[i][1])))
        return comp

    @staticmethod
    def _read(op: _Op, j: int, K: Box, hw: tuple[int, int], hw_in: tuple[int, int]) -> Box:
        return op.geo.bwd_box(j, K, hw_in, hw)

    @staticmethod
    def _hull(op: _Op, j: int, G: Box, hw_in: tuple[int, int]) -> Box:
        """The in-map box the read ``G`` takes its values from (through a padding mode's index map)."""
        my = op.geo.index_map(j, (G[0], G[1]), hw_in[0], 0)
        if my is None:
            return G
        mx = op.geo.index_map(j, (G[2], G[3]), hw_in[1], 1)
        vy, vx = my[my >= 0], mx[mx >= 0]
        return (int(vy.min()), int(vy.max()) + 1, int(vx.min()), int(vx.max()) + 1) if vy.size and vx.size else EMPTY

    def conv_pixels(self, comp: list[Box]) -> float:
        """Output pixels computed per image, averaged over the convolution-like operations (all operations when
        there are none): a full forward of a same-resolution model on an h x w frame counts h * w."""
        ops = [k for k, op in enumerate(self.ops) if op.kind == "op" and (op.conv_like or not self.n_conv)]
        return float(sum(self._computed(k, comp[k]) for k in ops)) / max(1, len(ops))

    def unit_costs(self, base: list[Any]) -> list[float]:
        """Each node's cost per output pixel and image, in multiply-adds, from the baseline values ``base``: a
        convolution-like operation's weight (its size is the multiply-adds of one output pixel), a region of
        tokens the size of its parameters (each token passes through its linear layers), any other operation the
        channels it writes per pixel; 0 for the input, constants and the output."""
        costs: list[float] = []
        for k, op in enumerate(self.ops):
            v = base[k]
            if op.kind != "op" or not isinstance(v, torch.Tensor) or v.ndim < 2:
                costs.append(0.0)
                continue
            per_pixel = v.numel() / max(1, v.shape[-2] * v.shape[-1])
            region = getattr(op.geo, "region", None)
            if region is not None:
                held = sum(t.numel() for t in region.gm.parameters()) + sum(t.numel() for t in region.gm.buffers())
                costs.append(max(per_pixel, float(held)))
                continue
            weight = None
            if op.conv_like:
                n = op.node
                if n.op == "call_module":
                    weight = getattr(self.gm.get_submodule(n.target), "weight", None)
                elif len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node) and n.args[1] in self.index:
                    weight = base[self.index[n.args[1]]]
            costs.append(float(weight.numel()) if isinstance(weight, torch.Tensor) else per_pixel)
        return costs

    def _computed(self, k: int, box: Box) -> int:
        """The output pixels node ``k`` computes for its box: a region of tokens computes its whole output."""
        if _empty(box) or not getattr(self.ops[k].geo, "whole", False):
            return _area(box)
        v = self.ops[k].node.meta.get("example_value")
        return int(v.shape[-2] * v.shape[-1]) if isinstance(v, torch.Tensor) else _area(box)

    # --------------------------------------------------------------------------------- evaluation
    def evaluate(self, base: list[Any], hws, comp: list[Box], x0: torch.Tensor) -> torch.Tensor:
        """ROI outputs (n, C, rh, rw) of ``n`` interventions computed on the boxes ``comp`` (one per node, e.g. the
        union of several blocks' schedules from :meth:`schedule`), given their input on ``comp[0]``:
        ``x0`` (n, C, h, w), the baseline input there with each intervention's content written in."""
        n = x0.shape[0]
        vals: list[torch.Tensor | None] = [None] * len(self.ops)
        for k, op in enumerate(self.ops):
            K = comp[k]
            if op.kind == "input":
                vals[k] = x0 if not _empty(K) else None
                continue
            if op.kind == "output":
                i = op.inputs[0]
                vals[k] = self._assemble(base[i], hws[i], vals[i], comp[i], K, n, None, 0.0, None)
                continue
            if op.kind == "const" or _empty(K):
                continue
            ins, reads = [], []
            for j, i in enumerate(op.inputs):
                G = op.geo.read_box(j, K, hws[i], hws[k])
                reads.append(G)
                ins.append(self._assemble(base[i], hws[i], vals[i], comp[i], G, n, op.geo, op.geo.fill, j))
            vals[k] = op.geo.run(ins, K, reads)
        return vals[-1]

    @staticmethod
    def _assemble(b: torch.Tensor, hw: tuple[int, int], v: torch.Tensor | None, C: Box, G: Box, n: int, geo,
                  fill: float, j) -> torch.Tensor:
        """A node's values on box ``G`` (its pixels; may leave the map) for ``n`` interventions: the baseline ``b``
        with the recomputed values ``v`` (on box ``C``) written over it; outside the map ``fill``, or, for a padding
        mode of ``geo``, the positions it maps there."""
        maps = None
        if geo is not None:
            my = geo.index_map(j, (G[0], G[1]), hw[0], 0)
            if my is not None:
                maps = (my, geo.index_map(j, (G[2], G[3]), hw[1], 1))
        if maps is None and v is not None and C == G:
            return v
        if maps is not None:
            vy, vx = maps[0][maps[0] >= 0], maps[1][maps[1] >= 0]
            inner = (int(vy.min()), int(vy.max()) + 1, int(vx.min()), int(vx.max()) + 1)
        else:
            inner = _inter(G, (0, hw[0], 0, hw[1]))
        lead = (n,) + tuple(b.shape[1:-2])
        if _empty(inner):
            src = b.new_zeros(lead + (0, 0))
        else:
            src = b[..., inner[0]: inner[1], inner[2]: inner[3]].expand(lead + (inner[1] - inner[0], inner[3] - inner[2]))
            ov = _inter(C, inner) if v is not None else EMPTY
            if not _empty(ov):
                if ov == inner and C == inner:
                    src = v
                else:
                    src = src.clone()
                    src[..., ov[0] - inner[0]: ov[1] - inner[0], ov[2] - inner[2]: ov[3] - inner[2]] = \
                        v[..., ov[0] - C[0]: ov[1] - C[0], ov[2] - C[2]: ov[3] - C[2]]
        if maps is not None:
            x = src
            for axis, m in enumerate(maps):
                size = x.shape[-2 + axis]
                idx = torch.as_tensor(np.where(m >= 0, m - inner[2 * axis], size), device=x.device)
                x = torch.index_select(F.pad(x, [0, 0, 0, 1] if axis == 0 else [0, 1], value=fill), x.ndim - 2 + axis, idx)
            return x
        if inner == G:
            return src
        out = torch.full(lead + (G[1] - G[0], G[3] - G[2]), fill, dtype=b.dtype, device=b.device)
        if not _empty(inner):
            out[..., inner[0] - G[0]: inner[1] - G[0], inner[2] - G[2]: inner[3] - G[2]] = src
        return out


# ------------------------------------------------------------------------------------ building the plan
def build_plan(model: Any, x: torch.Tensor | None = None) -> tuple[LocalPlan | None, str]:
    """Trace ``model`` and check that every operation that depends on the input is supported. Returns
    ``(plan, "ok")`` or ``(None, reason)``. Shapes are checked when the plan meets an input (:class:`FrameEvaluator`).

    First the symbolic trace (:func:`~.capture.trace`), valid at any input shape. A model that it cannot read (shape
    code such as ``n, c, h, w = x.shape``, padding to a multiple, control flow on sizes, a plain function wrapping a
    model) is captured instead as it really runs at the shape of ``x`` (:func:`~.capture.capture`, when ``x`` is
    given): every size is then a constant, and the plan is valid at that shape only (``plan.shape``). A model
    refused for a global operation is not captured (the capture would refuse it too)."""
    try:
        gm = trace(model)
        lift(gm)
        return LocalPlan(gm, _ops(gm)), "ok"
    except GlobalOp as exc:
        return None, str(exc)
    except Refused as exc:
        why = str(exc)
    if x is None:
        return None, why
    gm, swhy = shaped_trace(model, x)
    if gm is not None:
        from ..engine.runner import is_oom

        try:
            plan, out = _at_shape(gm, x)
            with torch.no_grad(), preserved(model):
                if torch.equal(out, model(x.clone())):
                    return plan, "ok"
            swhy = f"traced at {tuple(x.shape)}: its output differs from the model's"
        except Exception as exc:  # noqa: BLE001 - a graph this trace got wrong: the capture reads the model
            if is_oom(exc):
                raise
            swhy = f"traced at {tuple(x.shape)}: {exc if isinstance(exc, Refused) else repr(exc)}"
    gm, cwhy = capture(model, x)
    if gm is None:
        return None, f"{why}; {swhy}; {cwhy}"
    try:
        return _at_shape(gm, x, output=False)[0], "ok"
    except Refused as exc:
        return None, f"{why}; captured at {tuple(x.shape)}: {exc}"


def _at_shape(gm, x: torch.Tensor, output: bool = True) -> tuple[LocalPlan, torch.Tensor | None]:
    """The plan of a graph read at the shape of ``x`` (its nodes know their shapes: rewrites, regions of tokens),
    and (``output``) the graph's output at ``x``, from the one baseline pass that the regions' maps also read."""
    lift(gm)
    regions = wrap_regions(gm)
    plan = LocalPlan(gm, _ops(gm), tuple(x.shape))
    if not (regions or output):
        return plan, None
    with torch.no_grad():
        vals = plan.baseline(x)
    if regions:
        _analyse(plan, vals)
    plan.built = (x.detach().clone(), vals)
    return plan, vals[-1]


def _analyse(plan: LocalPlan, vals: list[Any]) -> None:
    """The dependency maps of the plan's regions of tokens, from the baseline values ``vals`` of its nodes."""
    for op in plan.ops:
        if isinstance(op.geo, RegionGeometry):
            region, n = op.geo.region, op.node
            ph = [p.name for p in region.gm.graph.nodes if p.op == "placeholder"]
            k = region.n_images
            consts = {name: vals[plan.index[a]] for name, a in zip(ph[k:], n.args[k:])}
            region.analyse(consts, [tuple(vals[plan.index[a]].shape) for a in n.args[:k]])


#: Methods that read only the dtype (and device) of their argument.
_DTYPE_ONLY = {"type_as"}


def _ops(gm) -> list[_Op]:
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Refused(f"the traced graph has {len(placeholders)} inputs; one image input is supported")
    # the input first (a capture may put the constants it lifted before it): ops[0] is the input everywhere
    nodes = placeholders + [n for n in nodes if n.op != "placeholder"]
    ops: list[_Op] = []
    index: dict[Any, int] = {}
    spatial: set = set()  # nodes that depend on the input
    for n in nodes:
        deps = [a for a in n.all_input_nodes if a in spatial]
        if n.op == "placeholder":
            op = _Op(n, "input")
            spatial.add(n)
        elif n.op == "output":
            if not (len(n.args) == 1 and isinstance(n.args[0], torch.fx.Node) and n.args[0] in spatial):
                raise Refused("the model returns several values, or one that does not depend on its input; one "
                              "output image is supported")
            op = _Op(n, "output", [index[n.args[0]]])
        elif not deps or (n.op == "call_method" and n.target in _DTYPE_ONLY and n.args[0] not in spatial):
            # a constant, or a constant cast to the input's dtype (``self.mean.type_as(x)``): no input value in it
            op = _Op(n, "const")
        else:
            try:
                geo, conv_like = _geometry(gm, n, deps, index)
            except Refused:
                raise
            except Exception as exc:  # an argument this plan cannot read: refused, naming the node
                where = n.target if n.op == "call_module" else n.name
                raise Refused(f"{where}: its arguments cannot be read as constants ({type(exc).__name__}: {exc})") from exc
            op = _Op(n, "op", [index[a] for a in deps], geo=geo, conv_like=conv_like)
            spatial.add(n)
        index[n] = len(ops)
        ops.append(op)
    for n in nodes:  # an in-place update of a tensor that something else reads would change what that reads
        inplace = (n.op == "call_function" and n.target in _INPLACE_FUNCS) or \
            (n.op == "call_method" and n.target in _INPLACE_METHODS) or \
            (n.op == "call_module" and getattr(gm.get_submodule(n.target), "inplace", False))
        target = n.args[0] if n.args else None
        if inplace and isinstance(target, torch.fx.Node) and len(target.users) > 1:
            what = type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else \
                getattr(n.target, "__name__", str(n.target))
            raise Refused(f"{n.name}: in-place {what} on a tensor that is read elsewhere")
    return ops
