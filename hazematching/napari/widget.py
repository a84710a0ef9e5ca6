"""The dock widget: choose a model and an image layer, Dehaze (in a worker thread, with progress and
Cancel), get ``NAME dehazed`` and ``NAME std`` layers beside the input."""

import threading

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from hazematching.core.sampler import SOLVERS
from hazematching.data.io import DataError
from hazematching.napari import engine
from hazematching.run import RunError
from hazematching.settings import DEFAULT_NOISE, NOISE_KEYING

EXPECTED = (DataError, RunError, ValueError, engine.Cancelled)


class DehazeWidget(QWidget):
    """napari dock widget; every failure the user can cause becomes a notification, never a trace."""

    progressed = Signal(int, int)

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.worker = None
        self._cancel = threading.Event()

        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("run folder or exported .zip")
        self.model_path.editingFinished.connect(self.load_model)
        browse_run = QPushButton("Run…")
        browse_run.clicked.connect(self._browse_run)
        browse_zip = QPushButton(".zip…")
        browse_zip.clicked.connect(self._browse_zip)
        path_row = QHBoxLayout()
        for widget in (self.model_path, browse_run, browse_zip):
            path_row.addWidget(widget)
        self.model_note = QLabel("no model loaded")
        self.model_note.setWordWrap(True)

        self.layer = QComboBox()
        self.samples = QSpinBox(minimum=1, maximum=1024, value=8)
        self.steps = QSpinBox(minimum=1, maximum=1000, value=20)
        self.solver = QComboBox()
        self.solver.addItems(list(SOLVERS))
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.noise = QComboBox()
        self.noise.addItems(list(NOISE_KEYING))
        self.noise.setCurrentText(DEFAULT_NOISE)
        self.noise.setToolTip("; ".join(f"{k}: {v}" for k, v in NOISE_KEYING.items()))
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.calibrated = QCheckBox("calibrated std")
        self.keep_samples = QCheckBox("add the samples as a layer")
        self.dehaze_button = QPushButton("Dehaze")
        self.dehaze_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progressed.connect(self._show_progress)

        form = QFormLayout()
        form.addRow("model", path_row)
        form.addRow("", self.model_note)
        form.addRow("image layer", self.layer)
        form.addRow("samples K", self.samples)
        form.addRow("steps N", self.steps)
        form.addRow("solver", self.solver)
        form.addRow("seed", self.seed)
        form.addRow("noise", self.noise)
        form.addRow("device", self.device)
        form.addRow("", self.calibrated)
        form.addRow("", self.keep_samples)
        buttons = QHBoxLayout()
        buttons.addWidget(self.dehaze_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self._set_sampler_enabled(False)

    # ---- model -------------------------------------------------------------------------------------
    def _browse_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "HazeMatching run folder")
        if folder:
            self.model_path.setText(folder)
            self.load_model()

    def _browse_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Exported bioimage.io package", filter="*.zip")
        if path:
            self.model_path.setText(path)
            self.load_model()

    def load_model(self) -> bool:
        """Load the model named in the path field and pre-fill its settings; False (with a
        notification) when the path is not a usable model."""
        text = self.model_path.text().strip()
        if self.model is not None and str(self.model.path) == text:
            return True
        self.model = None
        try:
            self.model = engine.load(text, self.device.currentText())
        except (RunError, DataError, OSError, ValueError) as exc:
            self.model_note.setText("no model loaded")
            self._set_sampler_enabled(False)
            return self._fail(str(exc))
        defaults = self.model.defaults()
        if defaults.settings is not None:
            self.samples.setValue(defaults.settings.samples)
            self.steps.setValue(defaults.settings.steps)
            self.solver.setCurrentText(defaults.settings.solver)
            self.seed.setValue(defaults.settings.seed)
        self.calibrated.setChecked(False)
        self.calibrated.setEnabled(defaults.calibrated_available)
        self._set_sampler_enabled(defaults.settings is not None)
        self.model_note.setText(defaults.note)
        return True

    def _set_sampler_enabled(self, enabled: bool) -> None:
        for widget in (self.samples, self.steps, self.solver, self.seed, self.noise, self.keep_samples):
            widget.setEnabled(enabled)

    # ---- layers ------------------------------------------------------------------------------------
    def _refresh_layers(self, event=None) -> None:
        current = self.layer.currentText()
        self.layer.clear()
        self.layer.addItems([layer.name for layer in self.viewer.layers])
        if current in [layer.name for layer in self.viewer.layers]:
            self.layer.setCurrentText(current)
        elif len(self.viewer.layers):
            self.layer.setCurrentIndex(len(self.viewer.layers) - 1)

    def _chosen_layer(self):
        name = self.layer.currentText()
        if name not in self.viewer.layers:
            raise DataError("no image layer chosen: open an image first")
        layer = self.viewer.layers[name]
        engine.check_layer(type(layer).__name__.lower(), layer.data, getattr(layer, "rgb", False))
        if getattr(layer, "multiscale", False):
            raise DataError(f"{name}: a multiscale layer; open its full-resolution level as an image")
        return layer

    # ---- running -----------------------------------------------------------------------------------
    def settings(self) -> dict:
        return dict(
            samples=self.samples.value(),
            steps=self.steps.value(),
            solver=self.solver.currentText(),
            seed=self.seed.value(),
        )

    def start(self) -> None:
        if self.worker is not None:
            return
        if not self.load_model():
            return
        try:
            layer = self._chosen_layer()
        except DataError as exc:
            self._fail(str(exc))
            return
        source = getattr(getattr(layer, "source", None), "path", None)
        self._cancel.clear()
        options = dict(
            settings=self.settings() if self.samples.isEnabled() else None,  # the model takes sampler settings
            noise=self.noise.currentText(),
            keep_samples=self.keep_samples.isChecked(),
            calibrated=self.calibrated.isChecked(),
            on_progress=self.progressed.emit,
            cancelled=self._cancel.is_set,
        )
        data = np.asarray(layer.data)
        self.worker = create_worker(
            engine.dehaze,
            self.model,
            data,
            engine.noise_key(layer.name, source),
            _start_thread=False,
            _ignore_errors=True,  # handled by _errored: a message, never a trace
            **options,
        )
        self.worker.returned.connect(lambda result: self._add_layers(layer, result))
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.progress.setValue(0)
        self._busy(True)
        self.status.setText(f"dehazing {layer.name} …")
        self.worker.start()

    def cancel(self) -> None:
        """Stop at the next tile batch; nothing is added."""
        self._cancel.set()
        self.status.setText("cancelling …")

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def _add_layers(self, layer, result: engine.Result) -> None:
        common = dict(scale=layer.scale, translate=layer.translate, axis_labels=layer.axis_labels, units=layer.units)
        self.viewer.add_image(
            result.mean, name=f"{layer.name} dehazed", contrast_limits=_limits(result.mean, 0.5), **common
        )
        if result.std is not None:
            self.viewer.add_image(
                result.std, name=f"{layer.name} std", colormap="magma", contrast_limits=_limits(result.std, 0), **common
            )
        if result.samples is not None:
            self.viewer.add_image(
                result.samples,
                name=f"{layer.name} samples",
                scale=(1, *layer.scale),
                translate=(0, *layer.translate),
                axis_labels=("sample", *layer.axis_labels),
                units=("pixel", *layer.units),
                contrast_limits=_limits(result.mean, 0.5),
            )
        self.progress.setValue(self.progress.maximum())  # finished: the bar stays full until the next run
        self.status.setText(
            f"{layer.name}: added '{layer.name} dehazed'" + (" and 'std'" if result.std is not None else "")
        )
        show_info(self.status.text())
        if result.warning:  # after the info, so it is the notification the user sees last
            self.status.setText(f"{self.status.text()}; WARNING {result.warning}")
            show_warning(result.warning)

    def _errored(self, exc: Exception) -> None:
        self.progress.setValue(0)  # nothing was added: the bar does not claim otherwise
        if isinstance(exc, engine.Cancelled):
            self.status.setText("cancelled: nothing was added")
        elif isinstance(exc, EXPECTED):
            self._fail(str(exc))
        else:  # a bug: still no trace in the user's face, but the message says what happened
            self._fail(f"dehazing failed ({type(exc).__name__}: {exc})")

    def _finished(self) -> None:
        self.worker = None
        self._busy(False)

    def _busy(self, busy: bool) -> None:
        self.dehaze_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _fail(self, message: str) -> bool:
        self.status.setText(message)
        show_error(message)
        return False


def _limits(data: np.ndarray, low: float) -> tuple[float, float]:
    """Percentile contrast limits (robust to a few bright pixels), never an empty range."""
    lo, hi = np.percentile(data, [low, 99.5]) if data.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))
