"""Search: queries over the stored descriptors, index builds and re-ranking."""
