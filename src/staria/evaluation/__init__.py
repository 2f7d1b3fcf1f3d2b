"""Evaluation stage: metrics, data statistics and reports on datasets and generated samples."""
