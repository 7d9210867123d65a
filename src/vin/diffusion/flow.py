"""Rectified flow (flow matching with a straight path), as in SD3 / flux / flow_matching.

Convention: t = 0 is data, t = 1 is noise. x_t = (1 - t) x0 + t eps; the model predicts the
velocity v = dx_t/dt = eps - x0; sampling integrates dx/dt = v from t = 1 down to t = 0.
Everything here takes a velocity *callable*, never a model class (DESIGN.md).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, float], Tensor]  # (x (B, ...), t) -> v (B, ...)


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t for per-sample t (B,)."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    return noise - x0


def sample_timesteps(n: int, kind: str, generator: torch.Generator | None = None,
                     mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Training timesteps (n,) in (0, 1): "logit_normal" (SD3: sigmoid of N(mean, std), more weight
    on the middle of the path) or "uniform"."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    raise ValueError(f"unknown timestep sampling {kind!r} (logit_normal or uniform)")


def timestep_schedule(steps: int, shift: float = 1.0) -> Tensor:
    """(steps + 1,) decreasing from 1 to 0; shift > 1 spends more of the steps at high noise
    (t' = shift t / (1 + (shift - 1) t), SD3's resolution shift)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def guided(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on velocities: v_u + scale (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


def sample_ode(velocity: Velocity, x: Tensor, schedule: Tensor, solver: str = "euler",
               callback: Callable[[int, float], None] | None = None) -> Tensor:
    """Integrate dx/dt = velocity(x, t) along `schedule` (from noise at schedule[0] to data at schedule[-1]).

    "euler": one call per step. "heun": Heun's 2nd-order method (two calls per step, Euler on the
    final step where t_next = 0, as in EDM).
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver {solver!r} (euler or heun)")
    ts = schedule.tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v = velocity(x, t)
        x_next = x + (t_next - t) * v
        if solver == "heun" and t_next > 0:
            v_next = velocity(x_next, t_next)
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = x_next
        if callback is not None:
            callback(i, t_next)
    return x
