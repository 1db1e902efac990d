"""SetNumpyActor: the set policy bound to one tenant, in numpy, for the control loop's per-step call.

A snapshot of a BoundSetPolicy (weights, the tenant's token structure, its envelope): the level keys do
not depend on the observation, so they are computed once here; a step is the tokens, the encoders, the
attention layers and the heads, in float32 as the torch model computes them (within 1e-5). Rebuild it
when the weights or the envelope change. ``benchmark`` times one-observation calls.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from shaping.agents.set_policy import LEVEL_FIELDS, AttentionLayer, BoundSetPolicy
from shaping.spec import ACTION_FIELDS

Array = np.ndarray[Any, Any]
_Dense = tuple[Array, Array]


def _dense(layer: nn.Module) -> _Dense:
    assert isinstance(layer, nn.Linear)
    w = np.ascontiguousarray(layer.weight.detach().to("cpu", torch.float32).numpy().T)
    return w, layer.bias.detach().to("cpu", torch.float32).numpy().copy()


def _mlp2(seq: nn.Module) -> tuple[_Dense, _Dense]:
    assert isinstance(seq, nn.Sequential)
    return _dense(seq[0]), _dense(seq[2])


def _norm(layer: nn.Module) -> tuple[Array, Array, float]:
    assert isinstance(layer, nn.LayerNorm)
    assert layer.weight is not None and layer.bias is not None
    return layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy(), float(layer.eps)


def _run_mlp2(x: Array, mlp: tuple[_Dense, _Dense]) -> Array:
    (w1, b1), (w2, b2) = mlp
    h = np.tanh(x @ w1 + b1)
    return h @ w2 + b2


def _layer_norm(x: Array, ln: tuple[Array, Array, float]) -> Array:
    g, b, eps = ln
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * g + b


class SetNumpyActor:
    """A BoundSetPolicy in numpy: masked logits, greedy and sampled actions of raw observations (..., obs_dim)."""

    def __init__(self, bound: BoundSetPolicy) -> None:
        model, binding = bound.model, bound.binding
        cfg = model.config
        self.structure = binding.structure
        self.nvec = binding.nvec
        self.n_classes = binding.n_classes
        self._k = cfg.d_key
        self._heads = cfg.n_heads
        self._enc = tuple(_mlp2(m) for m in (model.tenant_encoder, model.class_encoder, model.path_encoder))
        self._layers = [self._snapshot_layer(layer) for layer in model.layers]
        self._final = _norm(model.norm)
        self._class_query = _dense(model.class_query)
        self._path_key = _dense(model.path_key)
        self._stay = np.float32(model.stay.detach())
        self._root_query = _dense(model.root_query)
        self._value = _mlp2(model.value_head)
        with torch.no_grad():
            keys = {f: model.level_keys[f](t).numpy() for f, t in binding.levels.items()}
        k = self._k
        # The level keys of every field side by side: one matmul scores every field's levels of every class.
        self._field_keys = [(np.ascontiguousarray(keys[f][:, :k].T), keys[f][:, k].copy()) for f in LEVEL_FIELDS]
        self._root_key = (np.ascontiguousarray(keys["root"][:, :k].T), keys["root"][:, k].copy())
        self.allowed = binding.allowed.numpy().copy()
        self._mask = np.where(self.allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        self._width = binding.width
        self._scale = np.float32(1.0 / math.sqrt(k))
        self._att_scale = np.float32(1.0 / math.sqrt(cfg.d_model // cfg.n_heads))

    @staticmethod
    def _snapshot_layer(layer: nn.Module) -> dict[str, Any]:
        assert isinstance(layer, AttentionLayer)
        return {"n1": _norm(layer.norm1), "qkv": _dense(layer.qkv), "out": _dense(layer.out),
                "n2": _norm(layer.norm2), "ff1": _dense(layer.ff1), "ff2": _dense(layer.ff2)}  # fmt: skip

    def _attend(self, x: Array, p: dict[str, Any]) -> Array:
        *lead, n, d = x.shape
        h = self._heads
        w, b = p["qkv"]
        qkv = (_layer_norm(x, p["n1"]) @ w + b).reshape(*lead, n, 3, h, d // h)
        qkv = np.moveaxis(qkv, -4, -2)  # (..., 3, h, N, dh)
        q, k, v = qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]
        s = (q @ np.swapaxes(k, -1, -2)) * self._att_scale
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.swapaxes(s @ v, -2, -3).reshape(*lead, n, d)
        w, b = p["out"]
        x = x + (o @ w + b)
        w1, b1 = p["ff1"]
        w2, b2 = p["ff2"]
        return x + (np.maximum(_layer_norm(x, p["n2"]) @ w1 + b1, 0.0) @ w2 + b2)

    def forward(self, obs: Array | torch.Tensor) -> tuple[Array, Array]:
        """(..., D, width) masked logits and (...,) values of raw observations (..., obs_dim)."""
        cls_tok, path_tok, ten_tok, on_path = self.structure.tokens_numpy(np.asarray(obs, dtype=np.float32))
        ten_e, cls_e, path_e = self._enc
        x = np.concatenate(
            [_run_mlp2(ten_tok, ten_e)[..., None, :], _run_mlp2(cls_tok, cls_e), _run_mlp2(path_tok, path_e)], -2
        )
        for p in self._layers:
            x = self._attend(x, p)
        x = _layer_norm(x, self._final)
        c, k = self.n_classes, self._k
        ten, cls, paths = x[..., 0, :], x[..., 1 : 1 + c, :], x[..., 1 + c :, :]
        w, b = self._class_query
        queries = cls @ w + b
        lead = queries.shape[:-1]  # (..., C)
        out = np.full((*lead, len(ACTION_FIELDS), self._width), -np.inf, dtype=np.float32)
        for i, (key, bias) in enumerate(self._field_keys):
            f = ACTION_FIELDS.index(LEVEL_FIELDS[i])
            out[..., f, : key.shape[1]] = queries[..., i * k : (i + 1) * k] @ key + bias
        w, b = self._path_key
        pk = paths @ w + b
        f = ACTION_FIELDS.index("path")
        out[..., f, : self.structure.n_paths] = (
            queries[..., len(LEVEL_FIELDS) * k :] @ np.swapaxes(pk, -1, -2)
        ) * self._scale + self._stay * on_path
        w, b = self._root_query
        key, bias = self._root_key
        root = np.full((*lead[:-1], 1, self._width), -np.inf, dtype=np.float32)
        root[..., 0, : key.shape[1]] = (ten @ w + b) @ key + bias
        logits = np.concatenate([out.reshape(*lead[:-1], c * len(ACTION_FIELDS), self._width), root], -2)
        pooled = np.concatenate([ten, cls.mean(-2), paths.mean(-2)], -1)
        value = _run_mlp2(pooled, self._value)[..., 0]
        return logits + self._mask, value

    def scores(self, obs: Array | torch.Tensor) -> Array:
        """(..., D, width) masked logits; -inf outside the envelope and padding."""
        return self.forward(obs)[0]

    def act(self, obs: Array | torch.Tensor) -> Array:
        """(..., D) int64 greedy flat actions."""
        return self.scores(obs).argmax(-1)

    def sample(self, obs: Array | torch.Tensor, rng: np.random.Generator) -> Array:
        """(..., D) int64 actions drawn from the masked policy (Gumbel-max; -inf never drawn)."""
        logits = self.scores(obs)
        u = np.maximum(rng.random(logits.shape), np.finfo(np.float64).tiny)
        return (logits - np.log(-np.log(u))).argmax(-1)


def benchmark(actor: SetNumpyActor, n: int = 2000, warmup: int = 200, seed: int = 0) -> dict[str, float]:
    """Time ``actor.act`` on one observation at a time (the control loop's call).

    Returns:
        p50_us, p90_us, p99_us, mean_us over n calls, and the 1-minute load average when measured.
    """
    rng = np.random.default_rng(seed)
    obs = rng.random((n + warmup, actor.structure.obs_dim), dtype=np.float32)
    times = np.empty(n)
    for i in range(warmup):
        actor.act(obs[i])
    for i in range(n):
        t0 = time.perf_counter()
        actor.act(obs[warmup + i])
        times[i] = time.perf_counter() - t0
    us = times * 1e6
    load = float(np.loadtxt("/proc/loadavg", usecols=0)) if _has_loadavg() else float("nan")
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "loadavg_1m": load,
    }


def _has_loadavg() -> bool:
    try:
        with open("/proc/loadavg") as f:
            f.read(1)
    except OSError:
        return False
    return True
