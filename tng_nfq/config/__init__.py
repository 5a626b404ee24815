"""TNG's configuration language: load a JSON(C) document into the typed model.

    from tng_nfq.config import load_config, load_config_file, ConfigError

`load_config(text)` and `load_config_file(path)` return a frozen `Config`
(see `model.py`) or raise `ConfigError` whose `str()` is the one line
`"<json path>: <problem>"`. The language is described in docs/configuration.md.
"""

from .errors import ConfigError
from .load import load_config, load_config_file
from .model import (
    Address,
    AttestConfig,
    CaptureDst,
    Config,
    DecapFromHttp,
    DstFilter,
    Egress,
    EncapInHttp,
    HttpProxyIngress,
    Ingress,
    MappingEgress,
    MappingIngress,
    NetfilterEgress,
    NetfilterIngress,
    PathRewrite,
    RaConfig,
    VerifyConfig,
)

__all__ = [
    "Address",
    "AttestConfig",
    "CaptureDst",
    "Config",
    "ConfigError",
    "DecapFromHttp",
    "DstFilter",
    "Egress",
    "EncapInHttp",
    "HttpProxyIngress",
    "Ingress",
    "MappingEgress",
    "MappingIngress",
    "NetfilterEgress",
    "NetfilterIngress",
    "PathRewrite",
    "RaConfig",
    "VerifyConfig",
    "load_config",
    "load_config_file",
]
