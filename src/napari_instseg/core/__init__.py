"""Qt-free core of napari-instseg: models, normalisation, tiled prediction,
post-processing, training, metrics and checkpoint I/O.

Nothing under ``core`` may import napari or Qt (``tests/test_architecture.py``
checks it), so the CLI, scripts and tests call it directly and synchronously.
"""
