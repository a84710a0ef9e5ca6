"""The README's napari screenshot, from a real napari window: the shipped sample pair, the Dehaze
widget with a trained run, and the input, MMSE and std layers side by side (grid mode).

    xvfb-run -a python scripts/napari_screenshot.py --model demo/run --output docs/images/napari.png
"""

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or exported .zip")
    parser.add_argument("--output", default="docs/images/napari.png")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: the run's")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from hazematching.napari.sample import sample_pair
    from hazematching.napari.widget import DehazeWidget

    get_settings().application.gui_notification_level = "none"  # no toasts over the layers
    viewer = napari.Viewer(title="HazeMatching")
    viewer.window.resize(1500, 760)
    for data, meta, _ in sample_pair():
        if meta["name"] == "widefield":
            viewer.add_image(data, name="widefield")
    widget = DehazeWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Dehaze (HazeMatching)", area="right")
    widget.model_path.setText(args.model)
    if not widget.load_model():
        raise SystemExit(widget.status.text())
    widget.samples.setValue(args.samples)
    if args.steps:
        widget.steps.setValue(args.steps)
    widget.layer.setCurrentText("widefield")
    widget.start()
    deadline = time.time() + args.timeout
    while widget.worker is not None and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    if "widefield dehazed" not in viewer.layers:
        raise SystemExit(f"dehazing did not finish: {widget.status.text()}")
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.output, canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()


if __name__ == "__main__":
    main()
