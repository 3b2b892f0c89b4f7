"""thirdparty: upstream's C engines (a .so with a `struct engine_ops`), loaded through ctypes.

The engine's keys are declared here; loading and driving the library
arrives with the third-party engines issue.
"""
from __future__ import annotations

import attrs

from ..config import Name, Text, key
from ..errors import EtmemError
from ..hookspecs import hookimpl
from ..strategy import Strategy


@attrs.frozen
class LegacyEngineKeys:
    eng_name: str = key(Name(), help="the engine's name in its project; tasks name it in engine=")
    libname: str = key(Text(4096, absolute_path=True), help="absolute path of the engine's .so (owned by root, mode 0500 or 0700)")
    ops_name: str = key(Name(), help="symbol of the library's struct engine_ops")


class Legacy(Strategy):
    name = "thirdparty"
    engine_keys = LegacyEngineKeys
    pass_unknown_keys = True
    instance_key = "eng_name"
    description = "an upstream C engine (.so with struct engine_ops)"

    def __init__(self, engine):
        raise EtmemError("legacy C engines (name=thirdparty) cannot be loaded yet in this version of etmem for Python")


@hookimpl
def etmem_engine_types():
    return [Legacy]
