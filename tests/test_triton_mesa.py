"""napari's GL canvas first, then torchvision's detection code and a training
step (torch.optim), in one process.

On Mesa (Xvfb here, remote desktops, VMs) both segfaulted before
``core.torch_setup`` preloaded libtriton with RTLD_DEEPBIND. A fresh process
is needed: in the test process triton may already be loaded.
"""

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import sys
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.open_sample("napari-instseg", "nuclei")
    QApplication.processEvents()
    assert "torchvision" not in sys.modules and "triton" not in sys.modules
    maps = open("/proc/self/maps").read()
    print("mesa llvm loaded:", "libLLVM" in maps)

    import numpy as np
    from napari_instseg.core.models.info import ModelInfo
    from napari_instseg.core.models.loaded import LoadedModel, build_model
    from napari_instseg import segment_instances
    import torch

    info = ModelInfo(name="t", architecture="maskrcnn",
                     config={"num_classes": 2, "detections_per_image": 5,
                             "rpn_post_nms_top_n_test": 20, "box_score_thresh": 0.0},
                     class_names=["background", "nucleus"], tile_size=128)
    model = LoadedModel(build_model(info).eval(), info, torch.device("cpu"))
    result = segment_instances(np.random.rand(128, 128), model, score_threshold=0.0)
    viewer.add_labels(result.labels)

    # one training step: torch.optim reaches triton through torch._dynamo too
    module = model.module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]),
              "labels": torch.tensor([1]),
              "masks": torch.zeros((1, 128, 128), dtype=torch.uint8)}
    target["masks"][0, 10:40, 10:40] = 1
    loss = sum(module([torch.rand(3, 128, 128)], [target]).values())
    loss.backward()
    optimizer.step()
    QApplication.processEvents()
    print("triton loaded:", "triton" in sys.modules, "instances:", len(result))
    viewer.close()
    """
)


@pytest.mark.gui
def test_detection_model_runs_after_the_viewer_is_up(qapp):
    # qapp: pytest-qt's fixture, so pytest-xvfb's display is set for the child
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "instances:" in proc.stdout
