"""Training with Lightning: the thin `CarModule`, its callbacks, the frozen-backbone feature cache and
`train`, which turns a `Config` into a run directory (checkpoints, metrics.csv, curves, summary).

    fit.py        train / train_from_cli / build_model: the entry points
    run_data.py   the samples, split and classes of a run;  run_setup.py  the run folder name, DDP hand-over
    hardware.py   precision and DDP;  loggers.py  metrics.csv (atomic, resumable), TensorBoard
    callbacks.py  staged unfreezing and the run's callbacks;  lr_find.py  the learning-rate finder
    module.py     CarModule;  datamodule.py, transforms.py  the data;  features.py  the feature cache
    plots.py      curves.png and reading metrics.csv
    detection.py, detection_data.py  task: detect: DetectionModule (torchvision loss, mAP) and its data

Import the submodules directly (`carid.training.fit`, `carid.training.module`); this package file
imports nothing so that `import carid.training` stays cheap.
"""
