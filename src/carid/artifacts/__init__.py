"""The files carid writes and reads back: model bundles, ensembles, enrolments and run folders."""
