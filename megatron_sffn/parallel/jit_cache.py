"""One torch-extensions build folder per installation of torch and DeepSpeed.

DeepSpeed JIT-builds its ops (on CPU, `deepspeed_shm_comm` at every start) through
torch.utils.cpp_extension, which keeps them in `~/.cache/torch_extensions/py311_cpu/<op>`:
a folder named by Python version and accelerator only. The build file it writes there holds
the absolute paths of the installation's sources and headers, so a second virtual
environment on the machine (a CI run's fresh one, a user's other venv) rewrites it, ninja
sees the changed commands and rebuilds (40 s on 2 cores), and the first environment then
rebuilds again on its next start. Keyed by installation, each keeps its own build and
every start after the first finds it. A TORCH_EXTENSIONS_DIR the user set is left alone.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys

ENV = "TORCH_EXTENSIONS_DIR"


def installation_key(torch_dir: str, torch_version: str, deepspeed_dir: str, deepspeed_version: str) -> str:
    text = "|".join((os.path.realpath(torch_dir), torch_version, os.path.realpath(deepspeed_dir), deepspeed_version))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def extensions_dir() -> str:
    """The build folder for this Python, torch and DeepSpeed (as torch names its default one,
    plus the installation key)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root
    spec = importlib.util.find_spec("deepspeed")
    ds_dir = os.path.dirname(spec.origin) if spec and spec.origin else "none"
    try:
        ds_version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        ds_version = "none"
    key = installation_key(os.path.dirname(torch.__file__), torch.__version__, ds_dir, ds_version)
    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip
                   else f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(get_default_build_root(), f"{python}_{accelerator}_{key}")


def use_installation_extensions_dir() -> str:
    """Point torch's JIT builds at extensions_dir() unless the user chose a folder; the folder used."""
    if not os.environ.get(ENV):
        os.environ[ENV] = extensions_dir()
    return os.environ[ENV]
