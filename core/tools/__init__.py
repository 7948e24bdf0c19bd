"""Operator tools: doctor, the demo, synthetic data, explain pages."""
