"""The model-state check used by the engine's integrity tests sees every kind of change a forward or an engine
could make: an attribute rebound, added or removed, a container's items, a parameter or buffer changed by one bit
(a signed zero included), a tensor attribute changed in place, and the output."""

from __future__ import annotations

import pytest
import torch
from model_state import changes, snapshot
from nets import ConvStack
from torch import nn


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ConvStack((1, 1))
        self.register_buffer("b", torch.zeros(2))
        self.register_buffer("np_b", torch.zeros(2), persistent=False)
        self.mean = torch.zeros(3)
        self.seen: list = []
        self.tag = "a"

    def forward(self, x):
        return self.body(x)


def _rebind(m):
    m.tag = "b"


def _add(m):
    m.feat = 1


def _remove(m):
    del m.tag


def _append(m):
    m.seen.append(1)


def _signed_zero(m):
    m.b.mul_(-1.0)  # 0.0 -> -0.0: equal by value, not by bits


def _non_persistent(m):
    m.np_b[0] = 1.0


def _tensor_attribute(m):
    m.mean.add_(1.0)


def _parameter(m):
    with torch.no_grad():
        w = m.body.convs[0].weight
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(1.0))


def _hook(m):
    m.body.register_forward_hook(lambda mod, i, o: None)


@pytest.mark.parametrize("change", [_rebind, _add, _remove, _append, _signed_zero, _non_persistent,
                                    _tensor_attribute, _parameter, _hook])
def test_each_change_is_seen(change):
    m = Holder().eval()
    probe = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before = snapshot(m, probe)
    assert changes(m, before, probe) == []
    change(m)
    assert changes(m, before, probe) != []
