"""Training MANet and the plain classifier, on one process or many."""
