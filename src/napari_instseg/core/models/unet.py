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
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            first, *rest = block
            if isinstance(first, SkipConv):  # inference copy: no concatenated tensor
                x = first(x, skip)
            else:
                x = first(torch.cat([x, skip], dim=1))
            for layer in rest:
                x = layer(x)
        return x


class SkipConv(nn.Module):
    """A decoder block's first convolution, over the upsampled features and the
    skip connection, without concatenating them: a convolution of a channel
    concatenation is the sum of convolutions of its parts. It skips writing the
    largest tensor of each level (in channels-last memory, where convolutions
    are fastest on CPUs, the concatenation is a slow interleave), and the U-Net
    runs about 1.2x faster on a CPU. Only for prediction (see ``inference_copy``)."""

    def __init__(self, conv: nn.Conv2d, upsampled_channels: int):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("only ungrouped convolutions can be split")

        def part(weight, bias):
            new = nn.Conv2d(
                weight.shape[1],
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                bias=bias is not None,
            )
            with torch.no_grad():
                new.weight.copy_(weight)
                if bias is not None:
                    new.bias.copy_(bias)
            return new

        self.upsampled = part(conv.weight[:, :upsampled_channels], conv.bias)
        self.skip = part(conv.weight[:, upsampled_channels:], None)

    def forward(self, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.upsampled(upsampled).add_(self.skip(skip))


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
