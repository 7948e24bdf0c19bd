"""Evaluation: retrieval metrics, evaluation runs and their reports."""
