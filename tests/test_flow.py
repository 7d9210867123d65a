"""Tests for `vin.diffusion.flow`: the rectified-flow path, timesteps, guidance and the ODE solvers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vin.diffusion.flow import (
    ddim_step,
    guided,
    interpolate,
    sample_ode,
    sample_timesteps,
    timestep_schedule,
    velocity_target,
)

SETTINGS = settings(max_examples=60, deadline=None)


def randn(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------ the path


def test_interpolate_endpoints_and_per_sample_t():
    x0, eps = randn(3, 2, 4, 5, seed=1), randn(3, 2, 4, 5, seed=2)
    xt = interpolate(x0, eps, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(xt[0], x0[0])  # t = 0 is data
    assert torch.equal(xt[1], eps[1])  # t = 1 is noise
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * eps[2])
    assert interpolate(x0.float(), eps.float(), torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)).dtype == torch.float32


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(1e-3, 0.5))
def test_velocity_target_is_the_time_derivative(t, dt):
    x0, eps = randn(2, 3, 4, seed=3), randn(2, 3, 4, seed=4)
    v = velocity_target(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    a = interpolate(x0, eps, torch.full((2,), t, dtype=torch.float64))
    b = interpolate(x0, eps, torch.full((2,), t + dt, dtype=torch.float64))
    torch.testing.assert_close((b - a) / dt, v, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ timesteps


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_sample_timesteps_range_and_determinism(kind):
    a = sample_timesteps(20000, kind, torch.Generator().manual_seed(0))
    b = sample_timesteps(20000, kind, torch.Generator().manual_seed(0))
    c = sample_timesteps(20000, kind, torch.Generator().manual_seed(1))
    assert a.shape == (20000,)
    assert ((a > 0) & (a < 1)).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert abs(a.median().item() - 0.5) < 0.02  # both are symmetric about 1/2 (mean 0)
    if kind == "uniform":
        assert abs(a.std().item() - (1 / 12) ** 0.5) < 0.01
    else:  # logit-normal: the middle of the path is sampled more densely than by uniform
        assert ((a > 0.25) & (a < 0.75)).float().mean() > 0.6


def test_logit_normal_mean_and_std():
    g = torch.Generator().manual_seed(0)
    shifted = sample_timesteps(20000, "logit_normal", g, mean=1.0, std=0.5)
    assert abs(shifted.median().item() - 1 / (1 + math.exp(-1.0))) < 0.01
    logits = torch.log(shifted / (1 - shifted))
    assert abs(logits.std().item() - 0.5) < 0.02


def test_sample_timesteps_rejects_unknown_kind():
    with pytest.raises(ValueError):
        sample_timesteps(4, "cosine")


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("shift", [0.3, 1.0, 3.0])
def test_timestep_schedule_shape_and_monotone(steps, shift):
    s = timestep_schedule(steps, shift)
    assert s.shape == (steps + 1,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()


def test_timestep_schedule_shift():
    base = timestep_schedule(20)
    torch.testing.assert_close(base, torch.linspace(1, 0, 21))
    up, down = timestep_schedule(20, 3.0), timestep_schedule(20, 1 / 3)
    assert (up[1:-1] > base[1:-1]).all() and (down[1:-1] < base[1:-1]).all()
    assert (up > 0.5).sum() > (base > 0.5).sum() > (down > 0.5).sum()
    # known answer: shift s maps t = 1/2 to s / (1 + s)
    torch.testing.assert_close(timestep_schedule(2, 3.0), torch.tensor([1.0, 0.75, 0.0]))
    # shift s and 1/s are inverse maps of each other: t -> shifted by s -> shifted by 1/s = t
    t = up.double()
    back = (1 / 3) * t / (1 + (1 / 3 - 1) * t)
    torch.testing.assert_close(back.float(), base)


# ------------------------------------------------------------------------------ guidance


def test_guided():
    c, u = randn(2, 3, seed=5), randn(2, 3, seed=6)
    torch.testing.assert_close(guided(c, u, 1.0), c, rtol=0, atol=1e-12)
    assert torch.equal(guided(c, u, 0.0), u)
    torch.testing.assert_close(guided(c, u, 2.0), 2 * c - u)
    torch.testing.assert_close(guided(c, c, 7.5), c)


# ------------------------------------------------------------------------------ solvers


@st.composite
def schedules(draw):
    """Random decreasing schedules from 1 to 0."""
    inner = draw(st.lists(st.floats(0.001, 0.999), min_size=0, max_size=12, unique=True))
    pts = sorted({1.0, 0.0, *inner}, reverse=True)
    return torch.tensor(pts, dtype=torch.float64)


@SETTINGS
@given(schedules(), st.sampled_from(["euler", "heun"]), st.integers(0, 1000))
def test_straight_line_is_integrated_exactly(schedule, solver, seed):
    x0, eps = randn(2, 3, 4, seed=seed), randn(2, 3, 4, seed=seed + 1)
    # the constant velocity of the straight path: lands on x0 from eps for any schedule
    out = sample_ode(lambda x, t: eps - x0, eps.clone(), schedule, solver)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)

    # the state-dependent field of the same path, v(x, t) = (x - x0) / t (t > 0)
    def field(x, t):
        assert t > 0  # never evaluated at the data end (t = 0)
        return (x - x0) / t

    out = sample_ode(field, eps.clone(), schedule, solver)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)


def _exp_error(solver: str, steps: int) -> float:
    """dx/dt = x from t = 1 (x = 1) to t = 0: the answer is exp(-1)."""
    x = torch.ones(1, dtype=torch.float64)
    out = sample_ode(lambda x, t: x, x, timestep_schedule(steps), solver)
    return abs(out.item() - math.exp(-1.0))


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2)])
def test_convergence_order(solver, order):
    errors = [_exp_error(solver, n) for n in (8, 16, 32, 64, 128)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    for r in ratios[1:]:
        assert r == pytest.approx(2 ** order, rel=0.1)
    if solver == "heun":  # and it really is more accurate than Euler
        assert errors[-1] < _exp_error("euler", 128) / 10


def test_euler_known_answer_and_calls():
    calls = []

    def v(x, t):
        calls.append(t)
        return x

    out = sample_ode(v, torch.ones(1, dtype=torch.float64), timestep_schedule(4), "euler")
    assert out.item() == pytest.approx(0.75**4, rel=1e-12)
    assert calls == [1.0, 0.75, 0.5, 0.25]


def test_heun_calls_and_callback():
    calls, seen = [], []

    def v(x, t):
        calls.append(t)
        return -x

    sample_ode(v, torch.ones(1), timestep_schedule(4), "heun", callback=lambda i, t: seen.append((i, t)))
    # two calls per step, one on the last step (Euler where t_next = 0)
    assert calls == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    assert seen == [(0, 0.75), (1, 0.5), (2, 0.25), (3, 0.0)]


def test_heun_one_step_known_answer():
    # dx/dt = t from t = 1 to t = 0.5 (schedule not reaching 0: a full Heun step), x(1) = 0:
    # exact x(0.5) = (0.25 - 1) / 2 = -0.375, and the trapezoid rule is exact for linear v(t)
    out = sample_ode(lambda x, t: torch.full_like(x, t), torch.zeros(1, dtype=torch.float64),
                     torch.tensor([1.0, 0.5]), "heun")
    assert out.item() == pytest.approx(-0.375, abs=1e-15)
    euler = sample_ode(lambda x, t: torch.full_like(x, t), torch.zeros(1, dtype=torch.float64),
                       torch.tensor([1.0, 0.5]), "euler")
    assert euler.item() == pytest.approx(-0.5, abs=1e-15)


def test_unknown_solver_raises():
    with pytest.raises(ValueError):
        sample_ode(lambda x, t: x, torch.ones(1), timestep_schedule(2), "rk4")


# ------------------------------------------------------------------------------ ddim / ancestral


@SETTINGS
@given(schedules(), st.integers(0, 1000))
def test_ddim_without_eta_is_euler(schedule, seed):
    """eta = 0: the same steps as Euler, bit for bit, on a field that depends on x and t."""
    x0 = randn(2, 3, 4, seed=seed)
    field = lambda x, t: torch.sin(3 * x) * t - x0  # noqa: E731
    start = randn(2, 3, 4, seed=seed + 1)
    assert torch.equal(sample_ode(field, start.clone(), schedule, "ddim"), sample_ode(field, start.clone(), schedule, "euler"))


@SETTINGS
@given(st.floats(0.05, 1.0), st.floats(0.01, 0.95), st.integers(0, 1000))
def test_ddim_step_tends_to_euler_as_eta_vanishes(t, frac, seed):
    """The stochastic branch's algebra: mean (1 - s) x0 + sqrt(s^2 - var) eps is the Euler step at eta -> 0."""
    s = t * frac
    x, v, z = randn(4, 5, seed=seed), randn(4, 5, seed=seed + 1), randn(4, 5, seed=seed + 2)
    torch.testing.assert_close(ddim_step(x, v, t, s, 1e-9, z), x + (s - t) * v, rtol=0, atol=1e-7)


@pytest.mark.parametrize("t, s", [(1.0, 0.8), (0.8, 0.5), (0.3, 0.29), (0.5, 0.02)])
def test_ancestral_step_is_the_ddpm_posterior(t, s):
    """eta = 1 is Ho et al.'s posterior q(x_s | x_t, x0) written in alpha = 1 - t, sigma = t:
    mean a_ts sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_ts^2 / sigma_t^2 x0 and variance
    sigma_ts^2 sigma_s^2 / sigma_t^2, with a_ts = alpha_t / alpha_s, sigma_ts^2 = sigma_t^2 - a_ts^2 sigma_s^2;
    eta scales its standard deviation. A point mass at c gives the exact x0 = c from v = (x - c) / t."""
    c, x = torch.tensor([0.7, -0.2], dtype=torch.float64), torch.tensor([0.1, 1.3], dtype=torch.float64)
    v = (x - c) / t
    a_t, a_s, a_ts = 1 - t, 1 - s, (1 - t) / (1 - s)
    var_ts = t**2 - a_ts**2 * s**2
    mean = a_ts * s**2 / t**2 * x + a_s * var_ts / t**2 * c
    sd = math.sqrt(var_ts * s**2 / t**2)
    zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(ddim_step(x, v, t, s, 1.0, zero), mean, rtol=0, atol=1e-12)
    for eta in (1.0, 0.5):
        step = ddim_step(x, v, t, s, eta, one) - ddim_step(x, v, t, s, eta, zero)
        torch.testing.assert_close(step, torch.full((2,), eta * sd, dtype=torch.float64), rtol=0, atol=1e-12)
    if t == 1.0:  # from pure noise, eta 1 keeps nothing of x: only x0 and the fresh noise
        torch.testing.assert_close(ddim_step(x + 5, (x + 5 - c) / t, t, s, 1.0, zero), (1 - s) * c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ancestral_step_keeps_the_marginal_of_a_point_mass(eta):
    """Data = one point c, whose exact velocity is (x - c) / t: from x_t ~ (1 - t) c + t N(0, 1), a
    ddim step to s must give exactly (1 - s) c + s N(0, 1) (the noise it removes and the noise it
    adds sum to variance s^2), for any eta."""
    c, n = 0.7, 200_000
    g = torch.Generator().manual_seed(0)
    for t, s in [(1.0, 0.8), (0.6, 0.3), (0.2, 0.19)]:
        x = (1 - t) * c + t * torch.randn(n, generator=g, dtype=torch.float64)
        v = (x - c) / t
        out = ddim_step(x, v, t, s, eta, torch.randn(n, generator=g, dtype=torch.float64))
        assert (out.mean().item() - (1 - s) * c) == pytest.approx(0, abs=4 * s / n**0.5)
        assert out.std().item() == pytest.approx(s, rel=0.01)
        # and it did add noise: the new sample is not a function of x (correlation < 1)
        assert torch.corrcoef(torch.stack([x, out]))[0, 1].item() < 0.999


def _gaussian_velocity(sd: float):
    """Exact velocity of data N(0, sd^2): x0_hat = (1 - t) sd^2 x / ((1 - t)^2 sd^2 + t^2)."""
    def v(x, t):
        x0 = (1 - t) * sd**2 * x / ((1 - t) ** 2 * sd**2 + t**2)
        return (x - x0) / t
    return v


def _gaussian_spread_error(solver: str, eta: float, steps: int) -> float:
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = torch.randn(n, generator=g, dtype=torch.float64)
    noise = (lambda i: torch.randn(n, generator=g, dtype=torch.float64)) if eta else None
    out = sample_ode(_gaussian_velocity(0.5), x, timestep_schedule(steps), solver, eta=eta, noise=noise)
    assert abs(out.mean().item()) < 0.01
    return 0.5 - out.std().item()


@pytest.mark.parametrize("solver, eta", [("euler", 0.0), ("ddim", 1.0), ("ddim", 0.5)])
def test_sampling_gaussian_data_converges_to_its_spread(solver, eta):
    """With the exact velocity of N(0, 0.5^2) data, sampling from N(0, 1) ends at a std that
    approaches 0.5 at first order in the step size (the plug-in x0 estimate shrinks it a little
    per step), deterministic or ancestral: the shortfall halves when the steps double."""
    errors = [_gaussian_spread_error(solver, eta, n) for n in (50, 100, 200)]
    assert errors[-1] < 0.01
    for a, b in zip(errors, errors[1:]):
        assert 1.5 < a / b < 2.6, errors


def test_ddim_draws_noise_once_per_step_but_the_last():
    drawn = []

    def noise(i):
        drawn.append(i)
        return torch.zeros(1)

    sample_ode(lambda x, t: x, torch.ones(1), timestep_schedule(4), "ddim", eta=1.0, noise=noise)
    assert drawn == [0, 1, 2]  # the last step lands on x0 and draws nothing
    out = sample_ode(lambda x, t: x, torch.ones(1), timestep_schedule(4), "ddim", eta=0.0, noise=noise)
    assert drawn == [0, 1, 2] and torch.isfinite(out).all()  # eta 0 never draws


@pytest.mark.parametrize("solver, eta, noise, match", [
    ("euler", 1.0, lambda i: torch.zeros(1), "needs the ddim solver"),
    ("ddim", 1.5, lambda i: torch.zeros(1), "eta must be in"),
    ("ddim", 1.0, None, "needs a noise source"),
])
def test_ddim_refuses_bad_settings(solver, eta, noise, match):
    with pytest.raises(ValueError, match=match):
        sample_ode(lambda x, t: x, torch.ones(1), timestep_schedule(2), solver, eta=eta, noise=noise)
