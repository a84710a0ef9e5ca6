"""Dehaze a whole experiment: every YX plane of every TIFF of a folder, on every process, resumable
(``runner.predict_experiment``; the rest are its parts: jobs, manifest, work folder, schedule, monitor)."""

from hazematching.inference.experiment.jobs import JobError
from hazematching.inference.experiment.manifest import MANIFEST_NAME
from hazematching.inference.experiment.monitor import summary_lines
from hazematching.inference.experiment.runner import predict_experiment
from hazematching.inference.experiment.schedule import derive_seed
from hazematching.inference.experiment.workfolder import WORK_NAME

__all__ = ["MANIFEST_NAME", "WORK_NAME", "JobError", "derive_seed", "predict_experiment", "summary_lines"]
