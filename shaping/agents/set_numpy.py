"""SetNumpyActor: the set policy bound to one tenant, in numpy, for the control loop's per-step call.

A snapshot of a BoundSetPolicy (weights, the tenant's token structure, its envelope): the level keys do
not depend on the observation, so they are computed once here; a step is the tokens, the encoders, the
attention layers and the heads, in float32 as the torch model computes them (within 1e-5). Rebuild it
when the weights or the envelope change. ``benchmark`` times one-observation calls.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from shaping.agents.numpy_actor import NumpyActor
from shaping.agents.set_policy import LEVEL_FIELDS, AttentionLayer, BoundSetPolicy, SetActorCritic, bind
from shaping.agents.set_tokens import CLASS_DIM, PATH_DIM, PATH_DYNAMIC, TENANT_DIM
from shaping.spec import ACTION_FIELDS, TenantSpec

Array = np.ndarray[Any, Any]
_Dense = tuple[Array, Array]


def _dense(layer: nn.Module) -> _Dense:
    """(in, out) weight and (out,) bias of a Linear layer, float64 (folded in float64, cast once)."""
    assert isinstance(layer, nn.Linear)
    return layer.weight.detach().double().numpy().T.copy(), layer.bias.detach().double().numpy().copy()


def _affine(layer: nn.Module) -> tuple[Array, Array, float]:
    """A LayerNorm's gain, bias (float64) and epsilon."""
    assert isinstance(layer, nn.LayerNorm) and layer.weight is not None and layer.bias is not None
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy(), float(layer.eps)


def _fold(norm: nn.Module, w: Array, b: Array) -> tuple[Array, Array]:
    """``LN(x) @ w + b`` as ``core(x) @ w' + b'``: the LayerNorm's gain and bias folded into the next layer."""
    g, beta, _ = _affine(norm)
    return _f32(g[:, None] * w), _f32(beta @ w + b)


def _f32(a: Array) -> Array:
    return np.ascontiguousarray(a, dtype=np.float32)


def _normalize(x: Array, eps: np.float32, avg: Array) -> Array:
    """LayerNorm without its affine part (folded into the next layer), float32; ``avg`` is a (d, 1) column of
    1 / d: a matmul by it takes the mean over the features several times faster than ndarray.mean on small
    arrays (numpy 2's mean is Python code around the reduction)."""
    xc = x - x @ avg
    xc /= np.sqrt((xc * xc) @ avg + eps)
    return xc


class SetNumpyActor(NumpyActor):
    """A BoundSetPolicy in numpy: masked logits, greedy and sampled actions and their log-probabilities of raw
    observations (..., obs_dim). It is a NumpyActor of kind "ppo" with its own ``scores``, so everything built
    on NumpyActor (the control loop's ModelPolicy, through NumpyActor.from_model) runs it unchanged.

    The maths is the torch model's, rearranged once at construction: LayerNorm gains and biases are folded
    into the layers after them, the attention scale into the queries, the three token encoders into one
    block-diagonal MLP, and each level field's query and level keys into one matrix per tenant, so every
    head of every class is one matmul.
    """

    def __init__(self, bound: BoundSetPolicy) -> None:  # no super().__init__: NumpyActor's is for flat MLPs
        model, binding = bound.model, bound.binding
        cfg = model.config
        st = binding.structure
        self.structure = st
        self.kind = "ppo"
        self.nvec = binding.nvec
        self.obs_dim = st.obs_dim
        self._dims = np.arange(len(self.nvec))
        self.n_classes, self.n_paths = c, p = st.n_classes, st.n_paths
        self._n = 1 + c + p
        d, k, h = cfg.d_model, cfg.d_key, cfg.n_heads
        self._heads = h
        self._eps = np.float32(model.norm.eps)
        self._avg = np.full((d, 1), 1.0 / d, dtype=np.float32)
        self._ones = np.ones((self._n, 1), dtype=np.float32)  # row sums of the attention weights, by matmul
        self._class_avg = np.full((1, c), 1.0 / c, dtype=np.float32)
        self._path_avg = np.full((1, p), 1.0 / p, dtype=np.float32)
        # Tokens: one gather of every raw feature from the observation extended with its constants.
        self._gather = np.concatenate(
            [st.class_index.ravel(), st.path_index.ravel(), st.tenant_index, st.plan_path_index.ravel()]
        )
        self._cuts = np.cumsum([st.class_index.size, st.path_index.size, st.tenant_index.size])
        self._cls_raw = st.class_index.shape[1]
        self._path_raw = st.path_index.shape[1]
        # Encoders as one block-diagonal MLP over input bands (tenant, class, path) and hidden bands.
        encs = [_dense(m[0]) + _dense(m[2]) for m in (model.tenant_encoder, model.class_encoder, model.path_encoder)]
        dims = [TENANT_DIM, CLASS_DIM, PATH_DIM]
        self._bands = np.cumsum([0, *dims])
        w1 = np.zeros((sum(dims), 3 * d))
        w2 = np.zeros((3 * d, d))
        b1 = np.zeros((self._n, 3 * d))
        b2 = np.zeros((self._n, d))
        rows = [slice(0, 1), slice(1, 1 + c), slice(1 + c, self._n)]
        for i, (ew1, eb1, ew2, eb2) in enumerate(encs):
            w1[self._bands[i] : self._bands[i + 1], i * d : (i + 1) * d] = ew1
            w2[i * d : (i + 1) * d] = ew2
            b1[rows[i], i * d : (i + 1) * d] = eb1
            b2[rows[i]] = eb2
        self._enc = (_f32(w1), _f32(b1), _f32(w2), _f32(b2))
        self._blocks = [self._snapshot_layer(layer, h) for layer in model.layers]
        # Heads on the final normalized tokens: every level field's logits, the path query (scaled) and key,
        # and the root's logits, as columns of one matrix.
        with torch.no_grad():
            keys = {f: model.level_keys[f](t).double().numpy() for f, t in binding.levels.items()}
        wq, bq = _dense(model.class_query)
        cols_w, cols_b, pos = [], [], []
        width = binding.width
        for i, f in enumerate(LEVEL_FIELDS):
            key = keys[f]
            cols_w.append(wq[:, i * k : (i + 1) * k] @ key[:, :k].T)
            cols_b.append(bq[i * k : (i + 1) * k] @ key[:, :k].T + key[:, k])
            pos += [ACTION_FIELDS.index(f) * width + j for j in range(key.shape[0])]
        self._n_levels = len(pos)
        self._level_pos = np.array(pos)
        self._path_pos = ACTION_FIELDS.index("path") * width + np.arange(p)
        scale = 1.0 / math.sqrt(k)
        wpk, bpk = _dense(model.path_key)
        wrq, brq = _dense(model.root_query)
        cols_w += [wq[:, len(LEVEL_FIELDS) * k :] * scale, wpk, wrq @ keys["root"][:, :k].T]
        cols_b += [bq[len(LEVEL_FIELDS) * k :] * scale, bpk, brq @ keys["root"][:, :k].T + keys["root"][:, k]]
        self._k = k
        self._heads_w, self._heads_b = _fold(model.norm, np.hstack(cols_w), np.concatenate(cols_b))
        self._n_root = keys["root"].shape[0]
        self._stay = np.float32(model.stay.detach())
        g, beta, _ = _affine(model.norm)
        self._final = (_f32(g), _f32(beta))
        (vw1, vb1), (vw2, vb2) = _dense(model.value_head[0]), _dense(model.value_head[2])
        self._value = (_f32(vw1), _f32(vb1), _f32(vw2), _f32(vb2))
        self.allowed = binding.allowed.numpy().copy()
        self._mask = np.where(self.allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        self._width = width

    @staticmethod
    def _snapshot_layer(layer: nn.Module, heads: int) -> tuple[Array, ...]:
        assert isinstance(layer, AttentionLayer)
        w, b = _dense(layer.qkv)
        d = w.shape[0]
        scale = 1.0 / math.sqrt(d // heads)
        w[:, :d] *= scale  # the attention's scale, in the queries
        b[:d] *= scale
        qkv = _fold(layer.norm1, w, b)
        ff1 = _fold(layer.norm2, *_dense(layer.ff1))
        out, ff2 = _dense(layer.out), _dense(layer.ff2)
        return (*qkv, _f32(out[0]), _f32(out[1]), *ff1, _f32(ff2[0]), _f32(ff2[1]))

    def _attend(self, x: Array, p: tuple[Array, ...]) -> Array:
        wqkv, bqkv, wout, bout, w1, b1, w2, b2 = p
        *lead, n, d = x.shape
        h = self._heads
        qkv = (_normalize(x, self._eps, self._avg) @ wqkv + bqkv).reshape(*lead, n, 3, h, d // h)
        q = np.swapaxes(qkv[..., 0, :, :], -2, -3)  # (..., h, N, dh)
        kt = np.swapaxes(np.swapaxes(qkv[..., 1, :, :], -2, -3), -1, -2)  # (..., h, dh, N)
        v = np.swapaxes(qkv[..., 2, :, :], -2, -3)
        s = q @ kt
        s -= s.max(-1, keepdims=True)
        np.exp(s, out=s)
        s /= s @ self._ones
        x = x + (np.swapaxes(s @ v, -2, -3).reshape(*lead, n, d) @ wout + bout)
        hid = _normalize(x, self._eps, self._avg) @ w1 + b1
        np.maximum(hid, 0.0, out=hid)
        x += hid @ w2 + b2
        return x

    def _encode(self, obs: Array) -> tuple[Array, Array]:
        """(..., N, d) tokens after the attention layers, not yet normalized; (..., C, P) plan path one-hot."""
        x = np.asarray(obs, dtype=np.float32)
        st = self.structure
        if x.shape[-1] != st.obs_dim:
            raise ValueError(f"observation of length {x.shape[-1]}, the tenant's layout has {st.obs_dim}")
        lead = x.shape[:-1]
        c, p = self.n_classes, self.n_paths
        consts = st.consts if x.ndim == 1 else np.broadcast_to(st.consts, (*lead, st.consts.shape[0]))
        ext = np.concatenate([x, consts], -1)
        g = ext[..., self._gather]
        a, b, t = self._cuts
        on_path = g[..., t:].reshape(*lead, c, p)
        path_raw = g[..., a:b].reshape(*lead, p, self._path_raw)
        bands = self._bands
        tokens = np.zeros((*lead, self._n, int(bands[-1])), dtype=np.float32)
        cls = tokens[..., 1 : 1 + c, bands[1] : bands[2]]
        cls[..., : self._cls_raw] = g[..., :a].reshape(*lead, c, self._cls_raw)
        cls[..., self._cls_raw :] = on_path @ path_raw[..., : len(PATH_DYNAMIC)]
        paths = tokens[..., 1 + c :, bands[2] : bands[3]]
        paths[..., : self._path_raw] = path_raw
        paths[..., self._path_raw] = (self._class_avg @ on_path)[..., 0, :]
        ten = tokens[..., 0, : bands[1]]
        ten[..., : t - b] = g[..., b:t]
        ten[..., t - b : t - b + CLASS_DIM] = (self._class_avg @ cls)[..., 0, :]
        ten[..., t - b + CLASS_DIM :] = (self._path_avg @ paths)[..., 0, :]
        w1, b1, w2, b2 = self._enc
        hid = tokens @ w1 + b1
        np.tanh(hid, out=hid)
        x = hid @ w2 + b2
        for layer in self._blocks:
            x = self._attend(x, layer)
        return x, on_path

    def scores(self, obs: Array | torch.Tensor) -> Array:
        """(..., D, width) masked logits; -inf outside the envelope and padding."""
        return self._logits(*self._encode(np.asarray(obs, dtype=np.float32)))

    def _logits(self, x: Array, on_path: Array) -> Array:
        c, k, nl = self.n_classes, self._k, self._n_levels
        r = _normalize(x, self._eps, self._avg) @ self._heads_w + self._heads_b
        lead = r.shape[:-2]
        path = r[..., 1 : 1 + c, nl : nl + k] @ np.swapaxes(r[..., 1 + c :, nl + k : nl + 2 * k], -1, -2)
        out = np.full((*lead, len(self.nvec), self._width), -np.inf, dtype=np.float32)
        body = out[..., :-1, :].reshape(*lead, c, len(ACTION_FIELDS) * self._width)
        body[..., self._level_pos] = r[..., 1 : 1 + c, :nl]
        body[..., self._path_pos] = path + self._stay * on_path
        out[..., -1, : self._n_root] = r[..., 0, nl + 2 * k :]
        out += self._mask
        return out

    def forward(self, obs: Array | torch.Tensor) -> tuple[Array, Array]:
        """(..., D, width) masked logits and (...,) values of raw observations (..., obs_dim)."""
        x, on_path = self._encode(np.asarray(obs, dtype=np.float32))
        c = self.n_classes
        g, beta = self._final
        xn = _normalize(x, self._eps, self._avg) * g + beta
        pooled = np.concatenate([xn[..., 0, :], xn[..., 1 : 1 + c, :].mean(-2), xn[..., 1 + c :, :].mean(-2)], -1)
        w1, b1, w2, b2 = self._value
        value = (np.tanh(pooled @ w1 + b1) @ w2 + b2)[..., 0]
        return self._logits(x, on_path), value

    def normalize(self, obs: Array | torch.Tensor) -> Array:
        """(..., obs_dim) float32 observations: the set policy reads them as ObservationLayout scales them."""
        x = np.asarray(obs, dtype=np.float32)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation of length {x.shape[-1]}, the tenant's layout has {self.obs_dim}")
        return x


def benchmark(actor: SetNumpyActor, n: int = 2000, warmup: int = 200, seed: int = 0) -> dict[str, float]:
    """Time ``actor.act`` on one observation at a time (the control loop's call).

    Wall time counts the time a loaded machine keeps the process runnable but not running; the thread's
    CPU time does not, so both are reported.

    Returns:
        p50_us, p90_us, p99_us (wall), cpu_p50_us, cpu_p90_us over n calls, and the 1-minute load average.
    """
    rng = np.random.default_rng(seed)
    obs = rng.random((n + warmup, actor.structure.obs_dim), dtype=np.float32)
    wall = np.empty(n)
    cpu = np.empty(n)
    for i in range(warmup):
        actor.act(obs[i])
    for i in range(n):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        actor.act(obs[warmup + i])
        wall[i], cpu[i] = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
    return {
        "p50_us": float(np.percentile(wall, 50)) / 1e3,
        "p90_us": float(np.percentile(wall, 90)) / 1e3,
        "p99_us": float(np.percentile(wall, 99)) / 1e3,
        "cpu_p50_us": float(np.percentile(cpu, 50)) / 1e3,
        "cpu_p90_us": float(np.percentile(cpu, 90)) / 1e3,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def widened_spec(spec: TenantSpec, n_classes: int, n_paths: int) -> TenantSpec:
    """A tenant like ``spec`` with its classes cycled to n_classes (renamed c0, c1, ...; nominal rates 5 + 3i
    Mbit/s) and n_paths paths (p0, ...; 100 + 50i Mbit/s, 5 + 10i ms): layouts for benchmarks and tests."""
    classes = tuple(
        replace(spec.classes[i % len(spec.classes)], name=f"c{i}", mbps=5.0 + 3 * i) for i in range(n_classes)
    )
    return replace(
        spec,
        classes=classes,
        paths=tuple(f"p{i}" for i in range(n_paths)),
        path_mbps=tuple(100.0 + 50 * i for i in range(n_paths)),
        path_delay_ms=tuple(5.0 + 10 * i for i in range(n_paths)),
    )


def benchmark_layout(n_classes: int = 16, n_paths: int = 4, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """``benchmark`` of a freshly initialized (seeded) default-size model on the default scenario's first tenant
    widened to n_classes x n_paths (inference time does not depend on the weights)."""
    from shaping.sim.scenarios import load_scenario
    from shaping.spec import scenario_specs

    torch.manual_seed(seed)
    spec = widened_spec(scenario_specs(load_scenario("default"))[0], n_classes, n_paths)
    return benchmark(SetNumpyActor(bind(SetActorCritic().eval(), spec)), n=n, seed=seed)
