"""The one place that makes torch's compiler stack safe inside napari.

Root cause: torch imports triton lazily from ``torch._dynamo``
(``torch/_dynamo/utils.py``: ``if has_triton_package(): import triton``), and
``torch._dynamo`` is imported by ``import torchvision`` (``torchvision.ops.
roi_align``) and by ``torch.optim`` optimisers, among others.
libtriton.so bundles its own LLVM but exports its symbols. Once napari's
OpenGL canvas exists on Mesa (remote desktops, VMs, Xvfb), Mesa's
``libLLVM-15.so`` is already in the global symbol scope, so libtriton's LLVM
references bind to Mesa's copy and its static initialisers
(``llvm::DebugCounter``) segfault. Plain ``import torch`` does not import triton.

Fix: before any of that, load libtriton.so ourselves with
``RTLD_DEEPBIND`` (it resolves symbols inside itself first) and
``RTLD_LOCAL`` (its symbols stay out of the global scope). torch's later
``import triton`` reuses the loaded library. Only libtriton gets DEEPBIND,
not every extension module triton imports. Environment variables such as
TORCH_COMPILE_DISABLE do not prevent the import, and hiding triton from
``sys.modules`` would switch it off for every other plugin in napari.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_preloaded = False


def preload_triton_isolated() -> bool:
    """Load libtriton.so with RTLD_DEEPBIND | RTLD_LOCAL, once, if triton exists.

    Returns True if libtriton was preloaded here. A no-op off Linux, without
    triton, or when triton is already imported (then it was loaded before any
    GL context, or the process would have crashed already).
    """
    global _preloaded
    if _preloaded or "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    _preloaded = True
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    import ctypes
    import glob

    loaded = False
    for base in spec.submodule_search_locations:
        for library in glob.glob(os.path.join(base, "_C", "libtriton*.so")):
            try:
                ctypes.CDLL(library, mode=os.RTLD_LOCAL | os.RTLD_DEEPBIND)
                loaded = True
            except OSError:
                pass  # torch's own import then reports the problem as usual
    return loaded
