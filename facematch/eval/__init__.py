"""Evaluation, calibration and fairness reports."""
