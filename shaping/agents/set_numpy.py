"""SetNumpyActor: the set policy bound to one tenant, in numpy, for the control loop's per-step call.

A snapshot of a BoundSetPolicy (weights, the tenant's token structure, its envelope): the level keys do
not depend on the observation, so they are computed once here; a step is the tokens, the encoders, the
attention layers and the heads, in float32 as the torch model computes them (within 1e-5). One
observation, the control loop's call, takes a path of its own (_OneObservation: a fixed list of numpy
calls on preallocated buffers, no value head); batches take the general one. Rebuild it when the weights
or the envelope change. ``benchmark`` times one-observation calls (experiments/bench_set_infer.py runs it).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from shaping.agents.numpy_actor import NumpyActor
from shaping.agents.set_policy import LEVEL_FIELDS, AttentionLayer, BoundSetPolicy, SetActorCritic, bind
from shaping.agents.set_tokens import CLASS_DIM, PATH_DIM, PATH_DYNAMIC, TENANT_DIM, TenantStructure
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
    head of every class is one matmul. ``scores`` of one (obs_dim,) observation, and so ``act`` and the
    log-probabilities of one, run _OneObservation, whose buffers make an actor serve one thread at a time.
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
        self._one = _OneObservation(self, model)

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
        """(..., D, width) masked logits; -inf outside the envelope and padding. One observation (obs_dim,)
        takes the single-observation path (_OneObservation), which the greedy ``act`` and the log-probabilities
        of the control loop's step share."""
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim == 1 and x.shape[0] == self.obs_dim:
            return self._one(x)
        return self._logits(*self._encode(x))

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


def _centered(w: Array, b: Array) -> tuple[Array, Array]:
    """``x @ w + b`` followed by the removal of its mean over the outputs, as one affine map."""
    return w - w.mean(1, keepdims=True), b - b.mean()


def _augmented(w: Array, b: Array) -> Array:
    """(out, in + 1) float32 ``[w.T | b]``: times an input with a last row of ones, the layer with its bias."""
    return _f32(np.hstack([w.T, b[:, None]]))


def _buffer(rows: int, cols: int, last: float | None = None, real: int | None = None) -> Array:
    """A float32 (rows, cols) buffer of zeros; ``last``: the value its last row keeps in the first ``real``
    columns (default all): ones under an input make a bias, zeros under the padding tokens keep them zero."""
    out = np.zeros((rows, cols), dtype=np.float32)
    if last is not None:
        out[-1, :real] = last
    return out


_Step = tuple[Callable[..., Any], tuple[Any, ...]]
#: Softmax denominators below this (after a shift by the largest score of all heads and queries) may have
#: lost terms to underflow: the attention is then redone with each query's own largest score.
_TINY = np.float32(2.0**-64)


def _attend(q: Array, k: Array, v: Array, s: Array, top: Array, o: Array, n: int) -> None:
    """Into ``o`` (h, dh + 1, queries): every head's softmax-weighted values (v's last row of ones gives the
    denominators) from (h, dh, queries) queries, (h, keys, dh) keys and (h, dh + 1, keys) values, of which the
    first ``n`` are real and the others padding (zero keys, values and ones); ``s`` (h, keys, queries) and
    ``top`` (h, 1, queries) are scratch. The scores are shifted by their overall maximum (one reduction instead
    of one per query; softmax does not depend on the shift; the padding's zero scores keep every exp <= 1) unless
    a real query's denominator underflows; then by each query's largest real score, the padding keys' weights
    set to 0 (their exp could overflow)."""
    np.matmul(k, q, out=s)
    np.subtract(s, s.max(), out=s)
    np.exp(s, out=s)
    np.matmul(v, s, out=o)
    if o[:, -1, :n].min() < _TINY:
        np.matmul(k, q, out=s)
        np.maximum.reduce(s[:, :n], axis=1, keepdims=True, out=top)
        np.subtract(s, top, out=s)
        s[:, n:] = -np.inf
        np.exp(s, out=s)
        np.matmul(v, s, out=o)


def _relu(x: Array, zeros: Array) -> None:
    """In place; against an array of zeros, which numpy 2.4 runs several times faster than against 0.0."""
    np.maximum(x, zeros, out=x)


class _OneObservation:
    """The masked logits of one observation (the control loop's call) as a fixed list of numpy calls on
    preallocated buffers: at 21 tokens a numpy call costs about a microsecond whatever its arithmetic, so the
    maths is arranged for as few calls as it allows.

    - Tokens are feature-major, (features, N): LayerNorms and softmaxes reduce over the leading axis, the
      heads' outputs concatenate by reshape, and a layer's bias rides on a row of ones under its input.
    - The residual stream is kept centered (every layer writing to it has the mean of its outputs removed):
      it is only ever read through LayerNorms, which then reduce to a scale by 1 / sqrt(mean(x^2) + eps).
    - The tenant's constant features (applications, SLAs, published paths, counts) are folded into the
      encoders' first-layer biases; one gather reads the varying ones from the observation.
    - Each head's values carry a row of ones, so the softmax's denominators come out of the same matmul.
    - The logits are one gather into the padded (D, width) array, forbidden choices and padding reading a
      -inf slot (the envelope's mask); no value head.
    - The token axis is padded to a multiple of 8 with zero tokens (OpenBLAS 0.3's sgemm runs a (a, b) x (b, N)
      product much slower when N is not): with no ones under them they get no bias, so their keys, values and
      ones are zero and they change no real token; only the real queries are normalized and written back.

    The buffers make an instance serve one thread at a time.
    """

    def __init__(self, actor: SetNumpyActor, model: SetActorCritic) -> None:
        st = actor.structure
        self._c, self._p = st.n_classes, st.n_paths
        self._n = n = 1 + st.n_classes + st.n_paths
        self._m = m = -(-n // 8) * 8  # with the padding tokens
        self._obs_dim = st.obs_dim
        d = model.config.d_model
        # The observation, the tenant's constants and a zero: every token feature is one gather from it.
        self._ext = np.concatenate([np.zeros(st.obs_dim), st.consts, [0.0]]).astype(np.float32)
        self._obs = self._ext[: st.obs_dim]
        self._y = _buffer(d, m)  # the residual stream, centered
        self._mean = _f32(np.append(np.full(d, 1.0 / d), 1.0)[None])
        self._var = _buffer(1, m)
        self._xn = _buffer(d + 1, m, last=1.0, real=n)
        self._steps: list[_Step] = []
        self._encoder(model, st)
        for layer in model.layers:
            self._layer(layer)
        self._heads(actor, model)

    def __call__(self, obs: Array) -> Array:
        """(D, width) masked logits of one (obs_dim,) float32 observation."""
        self._obs[...] = obs
        for op, args in self._steps:
            op(*args)
        return self._flat[self._scatter]

    def _norm(self, norm: nn.Module) -> None:
        """Steps of a LayerNorm of the stream into ``_xn`` (its gain and bias are in the next layer): the squares
        over a row of eps, whose mean with a 1 in the last place is mean(x^2) + eps."""
        _, _, eps = _affine(norm)
        sq = _buffer(self._y.shape[0] + 1, self._m, last=eps)
        y, var = self._y, self._var
        self._steps += [
            (np.multiply, (y, y, sq[:-1])),
            (np.matmul, (self._mean, sq, var)),
            (np.sqrt, (var, var)),
            (np.divide, (y, var, self._xn[:-1])),
        ]

    def _encoder(self, model: SetActorCritic, st: TenantStructure) -> None:
        """Steps of the three token encoders as one first layer over a (K, N) matrix of the varying features:
        rows of the classes' (then the four of the path each class is on), of the paths' (then the share of
        classes on the path), of the tenant's own, then the tenant's means of the class and path rows."""
        c, p, n, m, od = self._c, self._p, self._n, self._m, self._obs_dim

        def varying(index: Array) -> list[int]:  # features that read the observation for some token
            return [j for j in range(index.shape[1]) if (index[:, j] < od).any()]

        n_cls, n_path, own = st.class_index.shape[1], st.path_index.shape[1], len(st.tenant_index)
        dyn_c, dyn_p, dyn_t = varying(st.class_index), varying(st.path_index), varying(st.tenant_index[None])
        n_pd = len(PATH_DYNAMIC)
        if dyn_p[:n_pd] != list(range(n_pd)):
            raise ValueError("the measured path features are not read from the observation")
        cls_rows, path_rows = [*dyn_c, *range(n_cls, CLASS_DIM)], [*dyn_p, n_path]
        jc, jp, jt = len(cls_rows), len(path_rows), len(dyn_t)
        k = jc + jp + jt + jc + jp
        cls, paths = slice(1, 1 + c), slice(1 + c, n)
        gidx = np.full(k * m + p * c, self._ext.shape[0] - 1, dtype=np.int64)  # the zero by default
        cells = gidx[: k * m].reshape(k, m)
        cells[: len(dyn_c), cls] = st.class_index[:, dyn_c].T
        cells[jc : jc + len(dyn_p), paths] = st.path_index[:, dyn_p].T
        cells[jc + jp : jc + jp + jt, 0] = st.tenant_index[dyn_t]
        gidx[k * m :] = st.plan_path_index.T.ravel()
        gathered = np.empty(gidx.shape[0], dtype=np.float32)
        z = gathered[: k * m].reshape(k, m)
        self._on_path = on_path = gathered[k * m :].reshape(p, c)  # (P, C)
        pool = _f32(np.concatenate([[0.0], np.full(c, 1.0 / c), np.full(p, 1.0 / p), np.zeros(m - n)])[:, None])

        val = self._ext.astype(np.float64)
        (tw1, tb1, tw2, tb2), (cw1, cb1, cw2, cb2), (pw1, pb1, pw2, pb2) = (
            _dense(enc[0]) + _dense(enc[2]) for enc in (model.tenant_encoder, model.class_encoder, model.path_encoder)
        )
        t_cls, t_path = own + np.array(cls_rows), own + CLASS_DIM + np.array(path_rows)
        w1 = _f32(np.hstack([cw1[cls_rows].T, pw1[path_rows].T, tw1[dyn_t].T, tw1[t_cls].T, tw1[t_path].T]))
        # Biases per token: the layer's, plus the constant features times their weights.
        fixed_c = np.array([j for j in range(n_cls) if j not in dyn_c], dtype=np.int64)
        fixed_p = np.array([j for j in range(n_path) if j not in dyn_p], dtype=np.int64)
        fixed_t = np.array([j for j in range(own) if j not in dyn_t], dtype=np.int64)
        cls_const, path_const = val[st.class_index[:, fixed_c]], val[st.path_index[:, fixed_p]]  # (C or P, fixed)
        b1 = np.zeros((tb1.shape[0], m))
        b1[:, cls] = (cb1 + cls_const @ cw1[fixed_c]).T
        b1[:, paths] = (pb1 + path_const @ pw1[fixed_p]).T
        b1[:, 0] = (
            tb1 + val[st.tenant_index[fixed_t]] @ tw1[fixed_t]
            + cls_const.mean(0) @ tw1[own + fixed_c] + path_const.mean(0) @ tw1[own + CLASS_DIM + fixed_p]
        )  # fmt: skip
        hid = _buffer(tb1.shape[0] + 1, m, last=1.0, real=n)
        y = self._y
        self._steps += [
            (np.take, (self._ext, gidx, None, gathered, "wrap")),  # every index is in range: "wrap" is unbuffered
            (np.matmul, (z[jc : jc + n_pd, paths], on_path, z[jc - n_pd : jc, cls])),  # the class's path
            (np.matmul, (np.full((1, c), 1.0 / c, dtype=np.float32), on_path.T, z[jc + jp - 1 : jc + jp, paths])),
            (np.matmul, (z[: jc + jp], pool, z[jc + jp + jt :, :1])),  # the tenant's means
            (np.matmul, (w1, z, hid[:-1])),
            (np.add, (hid[:-1], _f32(b1), hid[:-1])),
            (np.tanh, (hid[:-1], hid[:-1])),
        ]
        for (w2, b2), band in zip(((tw2, tb2), (cw2, cb2), (pw2, pb2)), (slice(0, 1), cls, paths), strict=True):
            self._steps.append((np.matmul, (_augmented(*_centered(w2, b2)), hid[:, band], y[:, band])))

    def _layer(self, layer: nn.Module) -> None:
        """Steps of an attention layer: QKV (queries scaled; each head's values, then a row of ones), the
        softmax over the keys (the leading axis of the scores), the centered output and feed-forward block."""
        assert isinstance(layer, AttentionLayer)
        w, b = _dense(layer.qkv)
        d, n, m, h = w.shape[0], self._n, self._m, layer.n_heads
        dh = d // h
        w[:, :d] /= math.sqrt(dh)
        b[:d] /= math.sqrt(dh)
        g, beta, _ = _affine(layer.norm1)
        qkv_w = np.hstack([(g[:, None] * w).T, (beta @ w + b)[:, None]])  # (3d, d + 1)
        ones = np.zeros((h, 1, d + 1))
        ones[..., -1] = 1.0
        values = np.concatenate([qkv_w[2 * d :].reshape(h, dh, d + 1), ones], 1).reshape(-1, d + 1)
        qkv = _buffer(2 * d + h * (dh + 1), m)
        q, k_t = qkv[:d].reshape(h, dh, m), qkv[d : 2 * d].reshape(h, dh, m)
        v = qkv[2 * d :].reshape(h, dh + 1, m)
        s = np.empty((h, m, m), dtype=np.float32)  # (heads, keys, queries)
        top = np.empty((h, 1, m), dtype=np.float32)
        o = np.empty((h, dh + 1, m), dtype=np.float32)  # weighted values, then the softmax's denominators
        att = _buffer(d + 1, m, last=1.0, real=n)
        tmp = _buffer(d, m)
        g2, beta2, _ = _affine(layer.norm2)
        w1, b1 = _dense(layer.ff1)
        ff = _buffer(w1.shape[1] + 1, m, last=1.0, real=n)
        y, xn = self._y, self._xn
        self._norm(layer.norm1)
        self._steps += [
            (np.matmul, (_f32(np.vstack([qkv_w[: 2 * d], values])), xn, qkv)),
            (_attend, (q, np.swapaxes(k_t, 1, 2), v, s, top, o, n)),
            (np.divide, (o[:, :dh, :n], o[:, dh:, :n], att[:-1].reshape(h, dh, m)[..., :n])),
            (np.matmul, (_augmented(*_centered(*_dense(layer.out))), att, tmp)),
            (np.add, (y, tmp, y)),
        ]
        self._norm(layer.norm2)
        self._steps += [
            (np.matmul, (_augmented(g2[:, None] * w1, beta2 @ w1 + b1), xn, ff[:-1])),
            (_relu, (ff[:-1], np.zeros_like(ff[:-1]))),
            (np.matmul, (_augmented(*_centered(*_dense(layer.ff2))), ff, tmp)),
            (np.add, (y, tmp, y)),
        ]

    def _heads(self, actor: SetNumpyActor, model: SetActorCritic) -> None:
        """Steps of the heads (the actor's matrix, feature-major) and the gather of the padded logits: the level
        and root logits from the heads' rows, the path logits from their own block, the forbidden from -inf."""
        c, p, n, m = self._c, self._p, self._n, self._m
        nl, k = actor._n_levels, actor._k
        heads_w = _augmented(actor._heads_w, actor._heads_b)
        rows = heads_w.shape[0]
        self._flat = flat = np.empty(rows * m + p * c + 1, dtype=np.float32)
        flat[-1] = -np.inf
        r = flat[: rows * m].reshape(rows, m)
        path = flat[rows * m : -1].reshape(p, c)
        stay_path = _buffer(p, c)
        self._norm(model.norm)
        self._steps += [
            (np.matmul, (heads_w, self._xn, r)),
            (np.matmul, (r[nl + k : nl + 2 * k, 1 + c : n].T, r[nl : nl + k, 1 : 1 + c], path)),
            (np.multiply, (self._on_path, actor._stay, stay_path)),
            (np.add, (path, stay_path, path)),
        ]
        nf, width, inf = len(ACTION_FIELDS), actor._width, flat.shape[0] - 1
        index = np.full((len(actor.nvec), width), inf, dtype=np.int64)
        body = index[:-1].reshape(c, nf * width)
        for i in range(c):
            body[i, actor._level_pos] = np.arange(nl) * m + 1 + i
            body[i, actor._path_pos] = rows * m + np.arange(p) * c + i
        index[-1, : actor._n_root] = (nl + 2 * k + np.arange(actor._n_root)) * m
        self._scatter = np.where(actor.allowed, index, inf)


def benchmark(
    actor: SetNumpyActor,
    n: int = 2000,
    warmup: int = 200,
    seed: int = 0,
    call: Callable[[Array], object] | None = None,
) -> dict[str, float]:
    """Time ``actor.act`` (or ``call``) on one observation at a time (the control loop's call).

    Wall time counts the time a loaded machine keeps the process runnable but not running; the thread's
    CPU time does not, so both are reported.

    Returns:
        p50_us, p90_us, p99_us (wall), cpu_p50_us, cpu_p90_us, cpu_p99_us over n calls, and the 1-minute
        load average.
    """
    act = call or actor.act
    rng = np.random.default_rng(seed)
    obs = rng.random((n + warmup, actor.structure.obs_dim), dtype=np.float32)
    wall = np.empty(n)
    cpu = np.empty(n)
    for i in range(warmup):
        act(obs[i])
    for i in range(n):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        act(obs[warmup + i])
        wall[i], cpu[i] = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
    return {
        "p50_us": float(np.percentile(wall, 50)) / 1e3,
        "p90_us": float(np.percentile(wall, 90)) / 1e3,
        "p99_us": float(np.percentile(wall, 99)) / 1e3,
        "cpu_p50_us": float(np.percentile(cpu, 50)) / 1e3,
        "cpu_p90_us": float(np.percentile(cpu, 90)) / 1e3,
        "cpu_p99_us": float(np.percentile(cpu, 99)) / 1e3,
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
