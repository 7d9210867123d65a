"""Rectified flow (flow matching with a straight path), as in SD3 / flux / flow_matching.

Convention: t = 0 is data, t = 1 is noise. x_t = (1 - t) x0 + t eps; the model predicts the
velocity v = dx_t/dt = eps - x0; sampling integrates dx/dt = v from t = 1 down to t = 0.
Everything here takes a velocity *callable*, never a model class (DESIGN.md).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from vin.config import SOLVERS

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


StepNoise = Callable[[int], Tensor]  # solver step index -> standard normal noise shaped like x


def ddim_step(x: Tensor, v: Tensor, t: float, t_next: float, eta: float = 0.0, z: Tensor | None = None) -> Tensor:
    """One DDIM step from t to t_next < t on the path x_t = (1 - t) x0 + t eps, given the velocity v
    at (x, t) (so x0 = x - t v, eps = x + (1 - t) v).

    eta = 0 is deterministic: the Euler step x + (t_next - t) v. eta = 1 samples the DDPM posterior
    q(x_next | x, x0) (ancestral sampling): mean (1 - s) x0 + sqrt(s^2 - var) eps and variance
    var = s^2 (1 - ((1 - t) s / ((1 - s) t))^2) for s = t_next; eta in between scales its standard
    deviation (Song et al. 2021, with alpha = 1 - t, sigma = t). `z`: standard normal like x,
    needed when eta > 0 and t_next > 0. The last step (t_next = 0) is the Euler step to x - t v, the
    x0 that v implies (below `model.prediction_t_min` not the DiT's raw estimate: see VINModel).
    """
    if eta == 0.0 or t_next <= 0.0:
        return x + (t_next - t) * v
    if z is None:
        raise ValueError("ddim_step with eta > 0 needs the noise z")
    s = t_next
    x0, eps = x - t * v, x + (1 - t) * v
    var = s * s * max(0.0, 1.0 - ((1 - t) * s / ((1 - s) * t)) ** 2)
    sd = eta * math.sqrt(var)
    return (1 - s) * x0 + math.sqrt(max(0.0, s * s - sd * sd)) * eps + sd * z


def sample_ode(velocity: Velocity, x: Tensor, schedule: Tensor, solver: str = "euler",
               callback: Callable[[int, float], None] | None = None, eta: float = 0.0,
               noise: StepNoise | None = None) -> Tensor:
    """Integrate dx/dt = velocity(x, t) along `schedule` (from noise at schedule[0] to data at schedule[-1]).

    "euler": one call per step. "heun": Heun's 2nd-order method (two calls per step, Euler on the
    final step where t_next = 0, as in EDM). "ddim": one call per step, `ddim_step` with `eta`;
    eta = 0 is Euler, eta > 0 makes it a stochastic (SDE) sampler that draws `noise(i)` at step i
    (the callers draw it per frame, so it does not depend on how a video is cut or distributed).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r} ({', '.join(SOLVERS)})")
    if eta and solver != "ddim":
        raise ValueError(f"eta = {eta} needs the ddim solver, not {solver}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if eta and noise is None:
        raise ValueError("the ddim solver with eta > 0 needs a noise source")
    ts = schedule.tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v = velocity(x, t)
        if solver == "ddim":
            x_next = ddim_step(x, v, t, t_next, eta, noise(i) if eta and t_next > 0 else None)
        else:
            x_next = x + (t_next - t) * v
        if solver == "heun" and t_next > 0:
            v_next = velocity(x_next, t_next)
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = x_next
        if callback is not None:
            callback(i, t_next)
    return x
