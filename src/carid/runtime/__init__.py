"""Answering photos with a trained model: the `Predictor`, its backends, ensembles, TTA and the
file side of `carid predict`. Torch-free on the ONNX Runtime path (the slim install).

Importing the package registers the ensemble predictor as the loader of ensemble folders
(`carid.runtime.predictor.register_loader`), so `Predictor.load(ENSEMBLE)` works from any import.
"""

from carid.runtime import ensemble as _ensemble  # noqa: F401  (registers the ensemble loader)
