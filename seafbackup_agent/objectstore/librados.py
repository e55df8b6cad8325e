"""Debian's librados binding (`python3-rados`), also from a virtualenv that was not made with
`--system-site-packages`.

The binding is one extension module, `rados.cpython-311-x86_64-linux-gnu.so`, installed for the system
Python in /usr/lib/python3/dist-packages. Any CPython of the same minor version loads it (the ABI is the
same), so a venv on Python 3.11 imports that one file, without putting the rest of the system's packages
on its path.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from seafbackup_agent.errors import ConfigError

SYSTEM_PACKAGES = Path("/usr/lib/python3/dist-packages")


def load_rados() -> ModuleType:
    """The `rados` module: the one on this Python's path, else Debian's, loaded from its file."""
    if "rados" in sys.modules:
        return sys.modules["rados"]
    spec = importlib.util.find_spec("rados")
    if spec is None:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = SYSTEM_PACKAGES / f"rados{suffix}"
            if candidate.is_file():
                spec = importlib.util.spec_from_file_location("rados", candidate)
                break
    if spec is None or spec.loader is None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ConfigError(
            f"the librados binding for Python {version} is not installed",
            hint="apt-get install python3-rados (Debian's Python must have the same minor version as the agent's)",
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["rados"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules["rados"]
        raise ConfigError(f"cannot load librados from {spec.origin}: {exc}",
                          hint="install python3-rados for this Python version") from exc
    return module
