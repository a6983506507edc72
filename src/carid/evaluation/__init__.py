"""Evaluation: scores of a model's predictions, calibration and the "unknown" threshold.

    metrics.py      evaluate_predictions(probabilities, labels, class_names, ...) -> EvaluationResult:
                    top-k, per-class precision/recall/F1, confusion, box IoU, ECE/NLL, taxonomy levels
    calibration.py  fit_temperature / apply_temperature (temperature scaling),
                    choose_unknown_threshold / apply_unknown (answer "unknown" below a confidence)

Both work on NumPy arrays, not on models, and import without torch or scipy: the slim predictor
applies the temperature and the unknown threshold. Import from the submodules
(`from carid.evaluation.metrics import evaluate_predictions`); this package file imports nothing.
"""
