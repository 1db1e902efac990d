"""Client mods of the privacy layers, in their order: SecAgg+ masking, distributed-DP noise share, clipping.

A reply passes the mods from the last to the first, so an update is first clipped to the clipping norm
(Flower's fixedclipping_mod, which must be last), then gets this client's Gaussian noise share
(distributed DP, see fed_server.privacy), then is masked by SecAgg+ (secaggplus_mod). Each layer is
switched on by the run's settings; Flower's mods assume they are always on (secaggplus_mod rejects a
plain training message, fixedclipping_mod a message without a clipping norm), hence the switches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import MessageType, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from shaping.fed_settings import RunSettings

ClientAppCallable = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, ClientAppCallable], Message]
#: Fit-config key of the noise share (the server's fed_server.strategy.KEY_NOISE_SHARE).
KEY_NOISE_SHARE = "fedshape.noise_share_std"


def add_noise_share(weights: list[np.ndarray], std: float, rng: np.random.Generator) -> list[np.ndarray]:
    """weights + N(0, std^2) on every coordinate (this client's share of the distributed-DP noise)."""
    return [w + rng.normal(0.0, std, size=w.shape).astype(w.dtype) for w in weights]


def distributed_noise_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Add N(0, share_std^2) to every weight of the (already clipped) reply, share_std from the fit config."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    if KEY_NOISE_SHARE not in fit_ins.config:
        raise KeyError(f"distributed DP is on but the server sent no {KEY_NOISE_SHARE}")
    std = float(fit_ins.config[KEY_NOISE_SHARE])
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    fit_res = compat.recorddict_to_fitres(out.content, keep_input=True)
    # A fresh OS-seeded generator per reply: the share must be unpredictable to the server.
    noised = add_noise_share(parameters_to_ndarrays(fit_res.parameters), std, np.random.default_rng())
    fit_res.parameters = ndarrays_to_parameters(noised)
    out.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return out


def switched(mod: Mod, on: Callable[[Context], bool]) -> Mod:
    """The mod when on(context) holds, a pass-through otherwise."""

    def wrapped(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        return mod(msg, ctxt, call_next) if on(ctxt) else call_next(msg, ctxt)

    wrapped.__name__ = f"switched_{getattr(mod, '__name__', 'mod')}"
    return wrapped


def privacy_mods(settings_of: Callable[[Context], RunSettings],
                 attacker: Callable[[Context], bool] = lambda _: False) -> list[Mod]:  # fmt: skip
    """The three layers in Flower's mod order, each switched by the run's settings.

    Clipping runs only where the server cannot clip (RunSettings.clients_clip), and never on an
    attacker's node (robustness experiments): a malicious tenant runs its own code and skips it.
    """
    return [
        switched(secaggplus_mod, lambda c: settings_of(c).secure_aggregation),
        switched(distributed_noise_mod, lambda c: settings_of(c).privacy_mode == "distributed"),
        switched(fixedclipping_mod, lambda c: settings_of(c).clients_clip and not attacker(c)),
    ]
