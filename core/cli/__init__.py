"""The ``manet`` command line: :mod:`manet.cli.main` builds the group, one module per command
group; ``python -m manet.cli`` runs it."""
