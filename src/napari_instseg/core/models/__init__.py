"""Model builders (U-Net written here, Mask R-CNN assembled from torchvision),
checkpoint I/O and the registry of named models."""
