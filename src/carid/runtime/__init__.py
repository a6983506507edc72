"""Answering photos with a trained model: the `Predictor`, its backends, ensembles, TTA and the
file side of `carid predict`. Torch-free on the ONNX Runtime path (the slim install)."""
