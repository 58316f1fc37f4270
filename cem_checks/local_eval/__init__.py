"""Local evaluation of single-block interventions: each layer is computed only where the intervention can change it
and only where the ROI output needs it.

For models traced by ``torch.fx`` into *local* operations, an intervention on an input box can change node ``n``
only inside ``chg(n)``, and the ROI output reads node ``n`` only inside ``need(n)``. Every node has its own pixel
grid (a strided convolution halves it, a pixel shuffle doubles it): boxes are kept per node, in that node's
pixels, and each operation maps them between its inputs' grids and its output grid, per axis:

- ``fwd``: the output range an input range can change (a superset is safe);
- ``bwd``: the input range that the output on a range reads (positions outside the map are filled as the
  operation's padding fills them: zeros, -inf for max pooling, or reflected/replicated/circular positions).

Node ``n`` is recomputed on ``compute(n) = need(n) ∩ chg(n)`` only; everywhere else it keeps its value for the
baseline input, computed once per frame. An operation on a sub-box takes its inputs assembled on the ranges it
reads (baseline values with the inputs' recomputed sub-boxes written over them) and runs without padding. In
exact arithmetic this is the full forward; in floating point the kernels may round differently on other sizes,
so the engine verifies a plan against the normal forward on real interventions before using it.

Interventions on several blocks are evaluated together in groups (:meth:`FrameEvaluator.roi_outputs_many`): a
group computes every node on the union of its blocks' boxes, and every operation runs once on the stacked
windows of all its interventions.

Supported (:func:`build_plan` refuses anything else and says which operation and why):

- convolutions (``nn.Conv2d``, ``F.conv2d``): any kernel, stride, dilation and groups, zero, reflect, replicate
  or circular padding; transposed convolutions (``nn.ConvTranspose2d``, ``F.conv_transpose2d``);
- ``pixel_shuffle`` / ``pixel_unshuffle`` (modules and functions); ``F.interpolate`` / ``nn.Upsample`` by an
  integer factor (nearest, bilinear, bicubic; ``align_corners`` False); average and max pooling with a stride
  (no ``ceil_mode``); ``F.pad`` and the padding modules; spatial slicing (``x[..., :h, :w]``);
- pointwise operations: activations, batch norm in eval mode, arithmetic with tensors or broadcast constants
  (parameters, buffers), ``torch.cat`` / ``torch.stack`` along non-spatial dims, channel indexing,
  ``ones_like`` / ``zeros_like`` / ``full_like`` (e.g. noise-level maps), in-place arithmetic on a tensor that
  nothing else reads;
- outputs larger than the input (SR at any integer scale): the ROI is a box of the output grid;
- after the rewrites of :mod:`.rewrite`: channel parts (``chunk`` / ``split`` along channels), assignments to
  channels (``x[:, :k] = ...``), channels-last regions of per-pixel operations (``permute(0, 2, 3, 1)``,
  ``nn.Linear`` / ``nn.LayerNorm`` over channels, ..., ``permute(0, 3, 1, 2)``), ``repeat_interleave`` over
  channels.

Refused as *global* (any block may change the ROI): global or adaptive pooling, reductions over the image
(mean, sum), normalisations over the spatial dims (group and instance norm), batch norm with batch statistics,
and regions of tokens every output pixel of which depends on the whole image (attention across the image).

Shape code (``n, c, h, w = x.shape``, padding to a multiple and cropping back, ``F.interpolate(size=...)``,
control flow on sizes, a plain function wrapping a model), which the symbolic trace cannot follow, is read as the
model really runs at the job's input shape: the trace at a shape (:mod:`.shaped`, values computed as it traces),
used where its output equals the model's, else ``torch.compile`` with static shapes (one graph). Every size is
then a constant, sizes of resampling become integer factors, and the plan holds for that shape only.

Window attention, reshapes to tokens and ``torch.roll`` in such a graph become *regions of tokens* (:mod:`.region`):
one operation each, run on its whole input, whose geometry is the exact dependency of its output pixels on its
input pixels, computed on boxes (:mod:`.boxes`).

Modules, one job each: :mod:`.capture` (the ``torch.fx`` trace and the capture at a shape, under the engine's guard;
:class:`Refused`, :class:`GlobalOp`), :mod:`.shaped` (the trace at a shape),
:mod:`.geometry` (boxes; how each kind of operation maps boxes between its input and output grids),
:mod:`.ops` (which geometry each supported operation gets, and the operations refused as global),
:mod:`.rewrite` (channel parts, channel assignment and channels-last regions rewritten to pointwise operations),
:mod:`.region` and :mod:`.boxes` (regions of tokens and their dependency boxes),
:mod:`.plan` (:func:`build_plan`, :class:`LocalPlan`: the nodes of the graph, schedules, evaluation on boxes) and
:mod:`.evaluation` (:class:`FrameEvaluator`, :data:`GROUP_COST`, :func:`traced_reach`).
"""

from .capture import GlobalOp, Refused, capture, trace
from .evaluation import GROUP_COST, GROUP_COST_ACCELERATOR, FrameEvaluator, traced_reach
from .geometry import EMPTY, Box, Gather, Geometry, Pointwise, Range, Resample, Shuffle, Transposed, Window
from .plan import MAX_BASELINE_BYTES, LocalPlan, build_plan

__all__ = [
    "EMPTY", "GROUP_COST", "GROUP_COST_ACCELERATOR", "MAX_BASELINE_BYTES", "Box", "FrameEvaluator", "Gather",
    "Geometry", "GlobalOp", "LocalPlan", "Pointwise", "Range", "Refused", "Resample", "Shuffle", "Transposed", "Window",
    "build_plan", "capture", "trace", "traced_reach",
]
