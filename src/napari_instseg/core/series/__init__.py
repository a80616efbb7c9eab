"""Image series: a folder of images segmented, reviewed one by one, and trained on."""
