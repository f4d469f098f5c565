"""Attention variants behind one registry. Every module of this package is imported here, so a
built-in variant is one file that registers itself.

    import attentions
    attentions.names()                      # registered variant names
    attentions.backends("entmax")           # backends usable here, fastest first
    attn = attentions.build("asentmax:alpha=1.5", n_heads=8, head_dim=32, d_model=256)
    y = attn(q, k, v, x=x, bias=bias, causal=True)   # (B, H, T, D)
"""

from .api import (  # noqa: F401
    REGISTRY,
    backends,
    build,
    canonical_spec,
    check_output,
    config,
    describe,
    get,
    load_plugin,
    names,
    register,
)
from .base import Attention, log_positions  # noqa: F401
from .normalizer import Alibi, Normalizer, nape_slopes  # noqa: F401
from .registry import import_modules
from .spec import SpecError, canonical, parse_spec  # noqa: F401

import_modules(__name__, __path__)  # the built-in variants register themselves on import
