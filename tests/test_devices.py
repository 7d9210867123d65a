"""vin.devices: host-to-device copies that do not wait (pinning itself needs CUDA and is mocked)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from vin.devices import pinned, to_device


class _Pair(NamedTuple):
    a: torch.Tensor
    b: str


def test_pinned_copies_every_tensor_and_keeps_the_structure(monkeypatch):
    copies = []

    def pin(self):
        copy = self.clone()
        copies.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    x, y, z = torch.zeros(2), torch.ones(3), torch.arange(4)
    out = pinned((1, x, ["caption", y], {"z": z, "n": None}, _Pair(x, "p")))
    monkeypatch.undo()
    assert len(copies) == 4
    assert out[0] == 1 and out[2][0] == "caption" and out[3]["n"] is None and out[4].b == "p"
    assert isinstance(out[4], _Pair) and isinstance(out[2], list) and isinstance(out[3], dict)
    got = [out[1], out[2][1], out[3]["z"], out[4].a]
    assert all(any(g is c for c in copies) for g in got)
    assert all(torch.equal(g, w) for g, w in zip(got, [x, y, z, x]))


def test_to_device_on_the_cpu_is_the_tensor():
    x = torch.randn(3)
    assert to_device(x, "cpu") is x and to_device(x, torch.device("cpu")) is x
