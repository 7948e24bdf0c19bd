"""Storage: the SQL that reads and writes manet's tables, one module per kind of row.

Callers above this package (extraction, search, evaluation, benchmarks) ask for rows through
typed functions here instead of writing SQL themselves, so a change to how something is stored
touches one module. :mod:`manet.store.descriptors` holds every statement over ``descriptors``.
"""
