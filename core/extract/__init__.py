"""Descriptor extraction: the batch run, leased workers and their status."""
