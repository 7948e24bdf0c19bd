"""What goes into the catalogue: ingest, image decoding, mined categories, training sets."""
