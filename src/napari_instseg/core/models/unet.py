"""A small U-Net for per-pixel classification (e.g. background / nucleus /
boundary), built like torchvision's detection models: parts (encoder, decoder,
head) composed by a builder that fills in defaults."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r} (use 'batch' or 'group')")


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by a norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Returns the feature map of every level, finest first."""

    def __init__(self, in_channels: int, widths: Sequence[int], norm: str = "batch"):
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], norm) for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """Upsamples the coarsest features and fuses each finer level by concatenation."""

    def __init__(self, widths: Sequence[int], norm: str = "batch"):
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i], norm)
            for i in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            first, *rest = block
            if isinstance(first, SkipConv):  # inference copy: it upsamples x itself
                x = first(x, skip)
            else:
                x = first(torch.cat([upsample(x, skip.shape[-2:]), skip], dim=1))
            for layer in rest:
                x = layer(x)
        return x


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SkipConv(nn.Module):
    """A decoder block's first convolution, over the upsampled coarser features
    and the skip connection, without concatenating them: a convolution of a
    channel concatenation is the sum of convolutions of its parts. It skips
    writing the largest tensor of each level (in channels-last memory, where
    convolutions are fastest on CPUs, the concatenation is a slow interleave).
    Only for prediction (see ``inference_copy``).

    On a CPU the upsampling and the convolution of its output run in bands of
    rows. At full resolution the upsampled tensor of one 512 px tile is 33.5 MB,
    above glibc's largest mmap threshold (32 MiB): each call would map fresh
    memory and fault every page in (20-50 ms of a tile's 250-350). Bands of
    ``BAND_BYTES`` come from the heap again and again, and give the same values.
    """

    BAND_BYTES = 8_000_000

    def __init__(self, conv: nn.Conv2d, upsampled_channels: int):
        super().__init__()
        same_size = all(k == 2 * p + 1 for k, p in zip(conv.kernel_size, conv.padding))
        plain = conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
        if not (same_size and plain):
            raise ValueError("only plain stride-1 convolutions that keep the size can be split")

        def part(weight, bias):
            kernel, padding = conv.kernel_size, conv.padding
            new = nn.Conv2d(
                weight.shape[1], conv.out_channels, kernel, padding=padding, bias=bias is not None
            )
            with torch.no_grad():
                new.weight.copy_(weight)
                if bias is not None:
                    new.bias.copy_(bias)
            return new

        self.upsampled = part(conv.weight[:, :upsampled_channels], conv.bias)
        self.skip = part(conv.weight[:, upsampled_channels:], None)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = skip.shape[-2:]
        out = self.skip(skip)
        rows = self._band_rows(coarse, size)
        if rows >= size[0]:
            return out.add_(self.upsampled(upsample(coarse, size)))
        for start in range(0, size[0], rows):
            stop = min(start + rows, size[0])
            out[:, :, start:stop] += self._upsampled_band(coarse, size, start, stop)
        return out

    def _band_rows(self, coarse: torch.Tensor, size) -> int:
        """Rows per band: all of them off the CPU (GPU allocators cache memory)
        or where the output is not exactly twice the input (bands assume it)."""
        doubled = (2 * coarse.shape[-2], 2 * coarse.shape[-1])
        if coarse.device.type != "cpu" or tuple(size) != doubled:
            return size[0]
        row_bytes = coarse.shape[0] * coarse.shape[1] * size[1] * coarse.element_size()
        return max(16, self.BAND_BYTES // row_bytes)

    def _upsampled_band(self, coarse: torch.Tensor, size, start: int, stop: int):
        """``self.upsampled(upsample(coarse, size))[:, :, start:stop]``, computed
        from the rows of ``coarse`` that this band needs."""
        height, width = size
        reach = self.upsampled.padding[0]  # upsampled rows the convolution reads beyond the band
        first, last = max(start - reach, 0), min(stop + reach, height)
        # Upsampled row i is interpolated from coarse rows near i/2 - 1/4. One coarse
        # row more on either side keeps the clamping at the slice's own edges away
        # from the rows used; at the image's edges it clamps as the whole would.
        top, bottom = max(first // 2 - 1, 0), min((last - 1) // 2 + 2, coarse.shape[-2])
        rows = upsample(coarse[:, :, top:bottom], (2 * (bottom - top), width))
        rows = rows[:, :, first - 2 * top : last - 2 * top]
        # zero rows where the band meets the image's edge, as the padding gives the whole
        rows = F.pad(rows, (0, 0, reach - (start - first), reach - (last - stop)))
        conv = self.upsampled
        return F.conv2d(rows, conv.weight, conv.bias, padding=(0, conv.padding[1]))


class UNet(nn.Module):
    """Encoder + decoder + 1x1 head giving per-class logits at input resolution.

    Inputs must have height and width divisible by ``size_divisor``; the
    prediction engine pads tiles accordingly.
    """

    def __init__(self, encoder: UNetEncoder, decoder: UNetDecoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.size_divisor = 2 ** (len(encoder.blocks) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def inference_copy(module: nn.Module) -> nn.Module:
    """The copy of a U-Net that prediction runs: BatchNorm folded into the
    convolutions and the decoder's concatenations split (``SkipConv``). The
    same outputs in eval mode, up to float rounding; it must not be trained."""
    fused = fuse_batchnorm(module)
    if isinstance(fused, UNet):
        decoder = fused.decoder
        for block in decoder.blocks:
            # UNetDecoder: the skip features have as many channels as the block puts out
            upsampled_channels = block[0].in_channels - block[0].out_channels
            block[0] = SkipConv(block[0], upsampled_channels)
    return fused


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of ``module`` with each BatchNorm folded into the
    convolution before it (same outputs in eval mode, one pass less over
    every feature map). Only for prediction: the copy must not be trained."""
    import copy

    fused = copy.deepcopy(module).eval()
    for block in fused.modules():
        if not isinstance(block, nn.Sequential):
            continue
        layers = list(block)
        for i in range(len(layers) - 1):
            conv, norm = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                new = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=True,
                )
                with torch.no_grad():
                    new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
                    new.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
                block[i] = new
                block[i + 1] = nn.Identity()
    return fused


def build_unet(
    in_channels: int = 3,
    num_classes: int = 3,
    widths: Sequence[int] = (16, 32, 64, 128),
    norm: str = "batch",
) -> UNet:
    """A U-Net with ``len(widths)`` levels (``widths[0]`` channels at full resolution)."""
    widths = list(widths)
    return UNet(
        UNetEncoder(in_channels, widths, norm),
        UNetDecoder(widths, norm),
        nn.Conv2d(widths[0], num_classes, 1),
    )


def class_probabilities(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities (float32) of a batch, at the device's
    fast precision (``devices.autocast_for``)."""
    from ..devices import autocast_for

    with torch.inference_mode(), autocast_for(batch.device):
        return torch.softmax(module(batch).float(), dim=1)
