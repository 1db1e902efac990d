"""Time variation of offered load: a diurnal cycle, per-class bursts and per-tenant flash crowds.

Assumptions: the diurnal cycle is a sinusoid with a random phase per environment; bursts start
independently per class with a fixed probability per control step and last a geometric number
of steps; flash crowds hit the web and video classes of one tenant at a time. Web load also
carries a Pareto multiplier per control step (heavy-tailed page-load volume).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from shaping.config import LoadConfig
from shaping.traffic.apps import VIDEO, WEB, WEB_MULT_CAP, WEB_PARETO_ALPHA


class LoadState(NamedTuple):
    """Per-environment state of the load processes."""

    phase: torch.Tensor  # (B,) diurnal phase offset in steps
    burst_left: torch.Tensor  # (B, K, C) steps left in a burst
    flash_left: torch.Tensor  # (B, K) steps left in a flash crowd


def initial_load_state(
    b: int, k: int, c: int, cfg: LoadConfig, gen: torch.Generator, device: torch.device
) -> LoadState:
    """Fresh load state with a random diurnal phase (0 when cfg.diurnal_random_phase is off)."""
    # Drawn either way, so the generator's stream does not depend on the switch.
    phase = torch.rand(b, generator=gen, device=device) * cfg.diurnal_period_steps
    if not cfg.diurnal_random_phase:
        phase = torch.zeros_like(phase)
    return LoadState(
        phase=phase,
        burst_left=torch.zeros(b, k, c, device=device),
        flash_left=torch.zeros(b, k, device=device),
    )


def _geometric(u: torch.Tensor, mean: float) -> torch.Tensor:
    """Geometric lengths (>= 1 step) of the given mean from uniforms u."""
    p = 1.0 / max(mean, 1.0)
    return torch.ceil(torch.log(u.clamp_min(1e-6)) / math.log1p(-p)) if p < 1.0 else torch.ones_like(u)


def diurnal_factor(time_steps: torch.Tensor, cfg: LoadConfig) -> torch.Tensor:
    """Relative load of the day at the given times (control steps, phase included): the linear
    interpolation of cfg.diurnal_curve over one period, wrapping around, or the sinusoid
    1 + diurnal_amplitude * sin when no curve is given."""
    period = cfg.diurnal_period_steps
    if not cfg.diurnal_curve:
        return 1.0 + cfg.diurnal_amplitude * torch.sin(2.0 * math.pi * time_steps / period)
    curve = torch.tensor(cfg.diurnal_curve, dtype=torch.float32, device=time_steps.device)
    n = curve.shape[0]
    pos = torch.remainder(time_steps, period) / period * n
    lo = pos.floor().long().clamp(0, n - 1)
    frac = pos - lo.float()
    return curve[lo] * (1.0 - frac) + curve[(lo + 1) % n] * frac


def capped_pareto_xm(alpha: float, cap: float) -> float:
    """Scale x_m of a Pareto(alpha) law such that min(X, cap) has mean 1.

    E[min(X, cap)] = (alpha x_m - x_m^alpha cap^(1 - alpha)) / (alpha - 1) for x_m < cap; it rises
    with x_m, so bisection finds the root. The uncapped choice x_m = (alpha - 1) / alpha has mean 1
    only without the cap (with alpha 1.5 and cap 8 the capped mean is 0.86, which would silently
    lower every web class's load by 14%).
    """

    def capped_mean(xm: float) -> float:
        return (alpha * xm - xm**alpha * cap ** (1.0 - alpha)) / (alpha - 1.0)

    lo, hi = 0.0, cap
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if capped_mean(mid) < 1.0 else (lo, mid)
    return 0.5 * (lo + hi)


#: x_m of the web multiplier: min(Pareto, WEB_MULT_CAP) has mean 1.
_WEB_XM = capped_pareto_xm(WEB_PARETO_ALPHA, WEB_MULT_CAP)


class LoadNoise(NamedTuple):
    """The uniforms one control step of the load processes draws."""

    burst_start: torch.Tensor  # (B, K, C)
    burst_length: torch.Tensor  # (B, K, C)
    flash_start: torch.Tensor  # (B, K)
    flash_length: torch.Tensor  # (B, K)
    web: torch.Tensor  # (B, K, C)


def draw_load_noise(b: int, k: int, c: int, gen: torch.Generator, device: torch.device) -> LoadNoise:
    """Draw one control step's uniforms for apply_load.

    The draws are kept apart from the arithmetic so that the arithmetic can be compiled; they are
    the same whatever the configuration switches on, so a seeded run's stream does not depend on it.
    """

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen, device=device)

    return LoadNoise(u(b, k, c), u(b, k, c), u(b, k), u(b, k), u(b, k, c))


def apply_load(
    state: LoadState, t: torch.Tensor, app: torch.Tensor, cfg: LoadConfig, noise: LoadNoise
) -> tuple[LoadState, torch.Tensor]:
    """Advance the load processes by one control step with the given draws (a pure function).

    Args:
        state: current state.
        t: (B,) control step of each environment.
        app: (K, C) application codes.
        cfg: load configuration.
        noise: this step's uniforms.
    Returns:
        The new state and the load multiplier of shape (B, K, C).
    """
    b = state.burst_left.shape[0]
    diurnal = diurnal_factor(t.float() + state.phase, cfg).view(b, 1, 1)

    start = noise.burst_start < cfg.burst_prob
    new_len = _geometric(noise.burst_length, cfg.burst_steps)
    burst_left = torch.where((state.burst_left <= 0) & start, new_len, (state.burst_left - 1).clamp_min(0))
    burst = torch.where(burst_left > 0, cfg.burst_factor, 1.0)

    fstart = noise.flash_start < cfg.flash_crowd_prob
    flen = _geometric(noise.flash_length, cfg.flash_crowd_steps)
    flash_left = torch.where((state.flash_left <= 0) & fstart, flen, (state.flash_left - 1).clamp_min(0))
    crowd_app = ((app == WEB) | (app == VIDEO)).unsqueeze(0)
    flash = torch.where(crowd_app & (flash_left > 0).unsqueeze(-1), cfg.flash_crowd_factor, 1.0)

    # Pareto(alpha) capped so one sample stays bounded, with x_m chosen so the capped law has mean 1.
    # Its uniform is drawn even with the multiplier off (draw_load_noise), so the generator's stream
    # (and every other random process of a seeded run) does not depend on the flag.
    pareto = (_WEB_XM * noise.web.clamp_min(1e-6).pow(-1.0 / WEB_PARETO_ALPHA)).clamp(max=WEB_MULT_CAP)
    web = torch.where((app.unsqueeze(0) == WEB) & cfg.web_pareto, pareto, 1.0)

    return LoadState(state.phase, burst_left, flash_left), diurnal * burst * flash * web


def advance_load(
    state: LoadState, t: torch.Tensor, app: torch.Tensor, cfg: LoadConfig, gen: torch.Generator
) -> tuple[LoadState, torch.Tensor]:
    """Draw one step's uniforms from gen and advance the load processes (see apply_load)."""
    b, k, c = state.burst_left.shape
    return apply_load(state, t, app, cfg, draw_load_noise(b, k, c, gen, t.device))


def reset_where(state: LoadState, fresh: LoadState, mask: torch.Tensor) -> LoadState:
    """Take `fresh` for the environments where mask (B,) is True."""
    return LoadState(
        *(torch.where(mask.view(-1, *([1] * (a.dim() - 1))), f, a) for a, f in zip(state, fresh, strict=True))
    )
