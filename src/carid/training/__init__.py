"""Training with Lightning: the thin `CarModule`, its callbacks, the frozen-backbone feature cache and
`train`, which turns a `Config` into a run directory (checkpoints, metrics.csv, curves, summary).

Import the submodules directly (`carid.training.fit`, `carid.training.module`); this package file
imports nothing so that `import carid.training` stays cheap.
"""
