"""The networks and their math: regions, pooling, attention, MANet, the extraction pipeline, whitening."""
