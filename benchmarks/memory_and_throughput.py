"""Peak memory of an 8192x8192 uint16 image through nuclei-unet, and per-tile throughput.

    python benchmarks/memory_and_throughput.py [--size 8192] [--threads 2] [--device cpu]

Each measurement runs in a fresh process so peak RSS (ru_maxrss) belongs to it
alone. Uses the bundled nuclei-unet weights, or random weights of the same
architecture when they are not installed (memory and speed do not depend on
the weights' values; the printout says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    torch.set_num_threads({threads})
    from napari_instseg.core.models.loaded import LoadedModel, build_model
    from napari_instseg.core.models.loading import load_model
    from napari_instseg.core.models.info import ModelInfo
    from napari_instseg.core.models.bundled import bundled_weights_path
    from napari_instseg.core.devices import resolve_device
    from napari_instseg import segment_semantic

    device = resolve_device("{device}")
    if bundled_weights_path("nuclei-unet").exists():
        model, weights = load_model("nuclei-unet", device), "bundled"
    else:
        info = ModelInfo(name="nuclei-unet", architecture="unet",
                         config={{"widths": [16, 32, 64, 128, 256]}},
                         class_names=["background", "nucleus", "boundary"])
        model = LoadedModel(build_model(info).eval().to(device), info, device)
        weights = "random"
    size = {size}
    rng = np.random.default_rng(0)
    # nuclei-like texture: bright blobs on a dim background, uint16
    image = (rng.random((size // 16, size // 16)) > 0.7).astype(np.uint16) * 3000
    image = np.kron(image, np.ones((16, 16), np.uint16)) + rng.integers(
        0, 200, (size, size), dtype=np.uint16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tiles = []
    start = time.perf_counter()
    result = segment_semantic(image, model, progress=tiles.append)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"weights": weights, "size": size, "seconds": seconds,
                       "tiles": tiles[-1].total, "instances": len(result.instances),
                       "peak_rss_gib": peak / 2**20, "rss_before_gib": base / 2**20,
                       "input_gib": image.nbytes / 2**30}}))
    """
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    code = CHILD.format(size=args.size, threads=args.threads, device=args.device)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _common import machine_description

    print(f"machine: {machine_description()}")
    print(
        f"nuclei-unet ({figures['weights']} weights), {args.size}x{args.size} uint16, "
        f"device {args.device}, {args.threads} threads"
    )
    print(
        f"  peak RSS        {figures['peak_rss_gib']:.2f} GiB "
        f"(input {figures['input_gib']:.2f} GiB, process before run "
        f"{figures['rss_before_gib']:.2f} GiB)"
    )
    print(f"  time            {figures['seconds']:.1f} s for {figures['tiles']} tiles")
    print(
        f"  throughput      {figures['seconds'] / figures['tiles'] * 1000:.0f} ms/tile, "
        f"{args.size**2 / figures['seconds'] / 1e6:.2f} Mpx/s"
    )
    print(f"  instances       {figures['instances']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
