"""Answering photos with a trained model: the `Predictor`, its backends, ensembles, detect → identify
pipelines, TTA and the file side of `carid predict`. Torch-free on the ONNX Runtime path (the slim
install).

Importing the package registers the ensemble and pipeline predictors as the loaders of their folders
(`carid.runtime.predictor.register_loader`), so `Predictor.load(FOLDER)` works from any import.
"""

from carid.runtime import ensemble as _ensemble  # noqa: F401  (registers the ensemble loader)
from carid.runtime import pipeline as _pipeline  # noqa: F401  (registers the pipeline loader)
