"""Blending a semantic model's overlapping tiles into one class map, row
band by row band, as torch operations on the model's device.

Only one band of float probabilities is held (the tile rows still open);
each finished band becomes the class map (argmax) and the instance class's
probability (uint8, x 255). On a CPU the outputs are numpy arrays written
through torch views; on a GPU they stay on the device for the instance
post-processing there (``core.labels.device_instances``), and the tiles'
probabilities never travel to the host unless they are asked for.
"""

from __future__ import annotations

import numpy as np
import torch

from .tiling import Tile, blend_window


def blending_device(model_device: torch.device) -> torch.device:
    """Where tiles are blended: on a CUDA model's GPU, else on the CPU."""
    return model_device if model_device.type == "cuda" else torch.device("cpu")


class BandBlender:
    """Accumulates weighted tile probabilities of one (height, width) slice.

    Call ``add(tile, probabilities)`` for every tile of a tile row, then
    ``close_rows(end)`` once the rows above ``end`` get no more tiles.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        n_classes: int,
        ramp: int,
        instance_class: int,
        device: torch.device,
        keep_probabilities: bool,
    ):
        self.width = shape[1]
        self.n_classes = n_classes
        self.ramp = ramp
        self.instance_class = instance_class
        self.device = device
        # on the CPU, .to() keeps these views of numpy arrays (no copy)
        self.classes = torch.from_numpy(np.zeros(shape, np.uint8)).to(device)
        self.instance_probability = torch.from_numpy(np.zeros(shape, np.uint8)).to(device)
        # kept on the host: the caller wants numpy, and a GPU's memory is scarcer
        self.probabilities = (
            np.zeros((n_classes, *shape), np.float32) if keep_probabilities else None
        )
        self._start = 0  # first row of the open band
        self._sum = torch.zeros((n_classes, 0, self.width), dtype=torch.float32, device=device)
        self._weight = torch.zeros((0, self.width), dtype=torch.float32, device=device)
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    def _window(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._windows:
            outer = np.outer(blend_window(height, self.ramp), blend_window(width, self.ramp))
            self._windows[key] = torch.from_numpy(outer).to(self.device)
        return self._windows[key]

    def add(self, tile: Tile, probabilities: torch.Tensor) -> None:
        """One tile's (classes, h, w) probabilities (padding beyond the tile ignored)."""
        grow = tile.y1 - (self._start + self._sum.shape[1])
        if grow > 0:
            extra = torch.zeros((self.n_classes, grow, self.width), device=self.device)
            self._sum = torch.cat([self._sum, extra], 1)
            self._weight = torch.cat([self._weight, extra[0]], 0)
        th, tw = tile.y1 - tile.y0, tile.x1 - tile.x0
        weight = self._window(th, tw)
        rows = slice(tile.y0 - self._start, tile.y1 - self._start)
        cols = slice(tile.x0, tile.x1)
        tile_probabilities = probabilities[:, :th, :tw].to(self.device, torch.float32)
        self._sum[:, rows, cols] += tile_probabilities * weight
        self._weight[rows, cols] += weight

    def close_rows(self, end: int) -> None:
        """Rows from the band's start to ``end`` are final: write their outputs."""
        n = end - self._start
        blended = self._sum[:, :n] / torch.clamp(self._weight[:n], min=1e-6)
        rows = slice(self._start, end)
        # max().indices, not argmax(): the same first-maximum index, but torch's CPU
        # argmax over the leading dimension took 24-48 ms for a 512x512 field (a
        # sixth of the U-Net's whole call); max() 2 ms
        self.classes[rows] = blended.max(0).indices.to(torch.uint8)
        self.instance_probability[rows] = torch.round(blended[self.instance_class] * 255).to(
            torch.uint8
        )
        if self.probabilities is not None:
            self.probabilities[:, rows] = blended.cpu().numpy()
        self._sum = self._sum[:, n:]
        self._weight = self._weight[n:]
        self._start = end
