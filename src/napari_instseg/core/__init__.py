"""Qt-free core of napari-instseg: models, normalisation, tiled prediction,
post-processing, training, metrics and checkpoint I/O.

Nothing under ``core`` may import napari or Qt (``tests/test_architecture.py``
checks it), so the CLI, scripts and tests call it directly and synchronously.

Importing ``core`` first preloads triton's library in isolation (see
``torch_setup``): torch reaches triton from several places (torchvision's ops,
``torch.optim``, ``torch._dynamo``), and each of them crashes beside Mesa's
LLVM once napari's canvas exists, so the guard runs before any of our torch use.
"""

from .torch_setup import preload_triton_isolated

preload_triton_isolated()
