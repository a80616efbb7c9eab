"""Mask R-CNN assembled from torchvision's parts with defaults for nuclei:
a compact ResNet-FPN with trainable norm layers (from-scratch training),
anchors from 8 px by default (the bundled model's start at 4 px), and room
for hundreds of detections per image."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..devices import autocast_for

_CALL_LOCK = threading.Lock()


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else 8, channels)


def build_maskrcnn(
    num_classes: int = 2,
    backbone: str = "resnet18",
    norm: str = "batch",
    anchor_sizes: Sequence[int | Sequence[int]] = (8, 16, 32, 64, 128),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    detections_per_image: int = 500,
    min_size: int = 512,
    max_size: int = 1024,
    fpn_channels: int = 256,
    box_head_size: int = 1024,
    mask_head_channels: int = 256,
    box_batch_size_per_image: int = 256,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    box_score_thresh: float = 0.05,
    torchvision_coco: bool = False,
) -> MaskRCNN:
    """A torchvision Mask R-CNN for inputs already normalised to about [0, 1].

    ``num_classes`` includes background. The transform's mean/std are identity
    because the engine normalises by percentiles itself, and at prediction time
    the engine sets the transform's sizes so images are not resized.
    ``fpn_channels``, ``box_head_size`` and ``mask_head_channels`` shrink
    torchvision's pyramid and heads (defaults 256, 1024 and 256) for fast CPU
    training and inference: at 256, the pyramid and the RPN head cost more than
    the ResNet-18 under them, and the mask head costs about 1.7 ms per object.
    """
    if torchvision_coco:  # torchvision's own ResNet-50-FPN layout, for its COCO weights
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        return maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            box_detections_per_img=detections_per_image,
        )
    norm_layer = {"batch": nn.BatchNorm2d, "group": _group_norm}[norm]
    # torchvision's resnet_fpn_backbone with every layer trainable, but with a
    # choice of pyramid width (it fixes 256)
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=norm_layer)
    stage2 = trunk.inplanes // 8
    body = BackboneWithFPN(
        trunk,
        return_layers={f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    # one size per pyramid level, or several (the same count on every level)
    anchors = AnchorGenerator(
        sizes=tuple(tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in anchor_sizes),
        aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes),
    )
    resolution = 7  # torchvision's default RoIAlign output for boxes
    box_head = TwoMLPHead(body.out_channels * resolution**2, box_head_size)
    mask_head = MaskRCNNHeads(body.out_channels, [mask_head_channels] * 4, dilation=1)
    return MaskRCNN(
        body,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_size, num_classes),
        box_detections_per_img=detections_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
    )


def detect_without_pasting(
    module: MaskRCNN,
    batch: torch.Tensor,
    sizes: list[tuple[int, int]],
    score_threshold: float = 0.0,
) -> list[dict]:
    """torchvision's Mask R-CNN stages without the final mask pasting.

    Boxes stay in tile pixels (the transform is told not to resize) and masks
    stay at the heads' 28x28, which the engine pastes into the label image
    itself instead of allocating one full-size float mask per detection.
    Boxes scoring under ``score_threshold`` are dropped before the mask head,
    which then runs only on the detections that are kept.
    """
    images = [batch[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
    transform, heads = module.transform, module.roi_heads
    # the sizes and score floor below are set on the module for this call: one
    # call at a time per process (cached models are shared between threads)
    with _CALL_LOCK:
        # training sets its own sizes, and the model its own score floor: restore them
        saved = transform.min_size, transform.max_size, heads.score_thresh
        transform.min_size = (min(min(s) for s in sizes),)
        transform.max_size = max(max(s) for s in sizes)
        # torchvision keeps scores > its floor, the engine scores >= the threshold
        floor = np.nextafter(np.float32(score_threshold), np.float32(0))  # scores are float32
        heads.score_thresh = max(heads.score_thresh, float(floor))
        try:
            image_list, _ = transform(images)
            if any(tuple(s) != tuple(o) for s, o in zip(image_list.image_sizes, sizes)):
                raise RuntimeError("Mask R-CNN transform resized a tile; tiles must be one size")
            device = image_list.tensors.device
            with autocast_for(device):
                features = module.backbone(image_list.tensors)
            if device.type != "cuda":
                # bfloat16 keeps 8 bits of mantissa: box coordinates would be off by
                # pixels, so the RPN and heads work in float32 (CUDA: float16, as before)
                features = {k: v.float() for k, v in features.items()}
            with autocast_for(device) if device.type == "cuda" else nullcontext():
                proposals, _ = module.rpn(image_list, features)
                detections, _ = heads(features, proposals, image_list.image_sizes)
        finally:
            transform.min_size, transform.max_size, heads.score_thresh = saved
    return detections


def masks_in_boxes(module: MaskRCNN, image: torch.Tensor, boxes: torch.Tensor) -> dict:
    """Mask R-CNN's second stage on boxes the user drew, instead of proposals.

    ``image`` is one normalised (C, H, W) window and ``boxes`` its (N, 4)
    ``x0, y0, x1, y1`` boxes in window pixels. Each box goes through the box
    head (its best foreground class, score and refined box) and then the mask
    head on the refined box: the boxes, scores, labels and 28x28 mask
    probabilities of the N objects, with no score floor and no NMS.
    """
    transform, heads = module.transform, module.roi_heads
    size = tuple(image.shape[-2:])
    with _CALL_LOCK, torch.inference_mode():
        saved = transform.min_size, transform.max_size
        transform.min_size, transform.max_size = (min(size),), max(size)
        try:
            image_list, _ = transform([image])
            features = module.backbone(image_list.tensors)
            features = {k: v.float() for k, v in features.items()}
            sizes = image_list.image_sizes
            pooled = heads.box_head(heads.box_roi_pool(features, [boxes], sizes))
            class_logits, regression = heads.box_predictor(pooled)
            scores = torch.softmax(class_logits, -1)
            labels = scores[:, 1:].argmax(1) + 1
            rows = torch.arange(len(boxes), device=boxes.device)
            refined = heads.box_coder.decode(regression, [boxes]).reshape(len(boxes), -1, 4)
            refined = refined[rows, labels].clone()
            refined[:, 0::2] = refined[:, 0::2].clamp(0, size[1])
            refined[:, 1::2] = refined[:, 1::2].clamp(0, size[0])
            mask_features = heads.mask_head(heads.mask_roi_pool(features, [refined], sizes))
            masks = torch.sigmoid(heads.mask_predictor(mask_features)[rows, labels])
        finally:
            transform.min_size, transform.max_size = saved
    return {"boxes": refined, "scores": scores[rows, labels], "labels": labels, "masks": masks}
