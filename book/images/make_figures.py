"""Draws the landing page's figure from the toy dataset, so the picture is code, not a paste.

Run from the repository root after changing the toy set or the palette:
``python3 book/images/make_figures.py`` (writes book/images/segmentation_task.png).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segbook.data import VOC_CLASSES, VOCSegmentation, get_voc_dir  # noqa: E402
from segbook.viz import colorize, overlay  # noqa: E402

OUT = Path(__file__).with_name("segmentation_task.png")


def main() -> None:
    dataset = VOCSegmentation(get_voc_dir("toy"), split="val")
    # the first validation image showing the most classes: the task at a glance
    index = max(range(len(dataset)), key=lambda i: (len(dataset[i][1].unique()), -i))
    image, label = dataset[index]  # (3, H, W) uint8, (H, W) int64
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=110)
    panels = [("image", image.permute(1, 2, 0).numpy()), ("label map", colorize(label)),
              ("overlay", overlay(image, label, alpha=0.5))]
    for ax, (title, picture) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(title)
        ax.axis("off")
    present = [int(c) for c in label.unique()]
    names = ", ".join(VOC_CLASSES[c] if c < len(VOC_CLASSES) else "ignore (255)" for c in present)
    fig.suptitle(f"classes in this image: {names}", fontsize=10, y=0.02, va="bottom")
    fig.tight_layout()
    fig.savefig(OUT, bbox_inches="tight")
    print(f"wrote {OUT.name} from val image {index}")


if __name__ == "__main__":
    main()
