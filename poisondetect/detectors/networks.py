"""The networks the sample-level auto-encoder detectors are built from, as data (no torch here:
the workflow plans with it).

RAE, CAE, CAE+, MagNet and MagNet + reformer are all made of two kinds of fitted network: a
reconstruction auto-encoder (an ``RAE``) and a classification auto-encoder (a ``CAE``). CAE+ is an
RAE and a CAE; MagNet (and MagNet + reformer, the same networks) two RAEs. ``networks(name,
params)`` says, for a detector's constructor parameters, which networks it is made of and the
settings that determine each one's weights; ``network_id`` names a network by its kind and a hash
of those settings. Detectors of one cell whose networks have the same id share one fit: the
workflow fits each network once (a ``fit_network`` job, or once per job), and the detectors adopt
the fitted networks (``fit(X, y, networks=...)``). A setting that acts only at scoring time (CAE+'s
``alpha``) is not among them, so changing it refits nothing.

The detectors' default parameters live here too (the classes take them from here), so that the
settings computed for planning and the ones the classes use are one source.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from poisondetect.names import NETWORK_KINDS, regex

# Parameter groups (each detector's constructor takes them as keyword arguments): the
# auto-encoders' architecture and training, the CAE's classifier head, the run settings.
AUTOENCODER = dict(
    arch="conv",  # conv | conv_avgpool | conv_nopool | dense (nets.build_autoencoder)
    image_shape=None,  # (C, H, W) of flat features; None = inferred (square, 1 or 3 channels)
    filters=3,  # conv filters
    hidden=(256,),  # dense only: hidden sizes
    latent=64,  # dense only: code size
    batch_size=256,
    lr=1e-3,  # Adam
    val_fraction=0.33,  # seeded hold-out whose best-loss weights are kept (0: none)
)
HEAD = dict(
    head_units=128, head_activation="sigmoid", dropout_in=0.25, dropout_hidden=0.5, n_classes=2
)
RUN = dict(seed=0, device="auto")

DEFAULTS: dict[str, dict[str, Any]] = {
    "rae": dict(**AUTOENCODER, epochs=300, patience=None, noise=0.0, **RUN),
    "cae": dict(alpha=0.66, **AUTOENCODER, **HEAD, epochs=100, patience=None, **RUN),
    "cae_plus": dict(
        alpha=0.66,
        **AUTOENCODER,
        **HEAD,
        rae_epochs=300,
        cae_epochs=100,
        rae_patience=None,
        cae_patience=None,
        **RUN,
    ),
    "magnet": dict(
        **{k: v for k, v in AUTOENCODER.items() if k not in ("hidden", "latent")},
        archs=None,
        norms=(2, 1),
        dense_hidden=((256,), (128,)),  # the two dense AEs' sizes (in place of hidden / latent)
        dense_latent=(64, 32),
        noise=0.1,
        epochs=300,
        patience=None,
        **RUN,
    ),
}
DEFAULTS["magnet_reformer"] = DEFAULTS["magnet"]

# the settings that determine a fitted network's weights (the device does not name a network)
_RAE_KEYS = (*[k for k in AUTOENCODER], "epochs", "patience", "noise", "seed")
_CAE_KEYS = (*[k for k in AUTOENCODER], *HEAD, "epochs", "patience", "seed")


def magnet_archs(params: dict) -> tuple[str, str]:
    """MagNet's two auto-encoders' architectures: ``archs``, or the task's family of nets."""
    if params["archs"] is not None:
        return tuple(params["archs"])
    return ("dense", "dense") if params["arch"] == "dense" else ("conv_avgpool", "conv_nopool")


def _settings(params: dict, keys, **override) -> dict:
    out = {k: params[k] for k in keys if k in params}
    out.update(override)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(out.items())}


def networks(name: str, params: dict, **extra) -> dict[str, tuple[str, dict]]:
    """The networks a detector ``name`` built from its config block ``params`` and the run
    settings ``extra`` is made of (as ``registry.build`` makes it: an extra only where the
    constructor takes it, the block wins): role -> (kind "rae" or "cae", the settings that
    determine that network's weights); ``{}`` for a detector without networks."""
    if name not in DEFAULTS:
        return {}
    defaults = DEFAULTS[name]
    p = {**defaults, **{k: v for k, v in extra.items() if k in defaults}, **(params or {})}
    if name == "rae":
        return {"rae": ("rae", _settings(p, _RAE_KEYS))}
    if name == "cae":
        return {"cae": ("cae", _settings(p, _CAE_KEYS))}
    if name == "cae_plus":
        return {
            "rae": (
                "rae",
                _settings(
                    p, _RAE_KEYS, epochs=p["rae_epochs"], patience=p["rae_patience"], noise=0.0
                ),
            ),
            "cae": (
                "cae",
                _settings(p, _CAE_KEYS, epochs=p["cae_epochs"], patience=p["cae_patience"]),
            ),
        }
    if name in ("magnet", "magnet_reformer"):
        return {
            f"ae{i + 1}": (
                "rae",
                _settings(
                    p,
                    _RAE_KEYS,
                    arch=arch,
                    hidden=p["dense_hidden"][i],
                    latent=p["dense_latent"][i],
                    seed=p["seed"] + i,
                ),
            )
            for i, arch in enumerate(magnet_archs(p))
        }
    return {}


_HASH_CHARS = 12
# what network_id returns (the workflow's {network} wildcard constraint)
NETWORK_ID_PATTERN = rf"(?:{regex(NETWORK_KINDS)})-[0-9a-f]{{{_HASH_CHARS}}}"


def network_id(kind: str, settings: dict) -> str:
    """A network's name: its kind and a short hash of its settings (equal settings, equal id)."""
    if kind not in NETWORK_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; known: {', '.join(NETWORK_KINDS)}")
    text = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]}"
