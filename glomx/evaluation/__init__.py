"""The evaluate stage's parts: scoring with TTA, slide bootstrap, calibration, baseline, report."""
