"""``python -m manet.cli``: the ``manet`` command (e.g. under ``torchrun``)."""

from manet.cli.main import main

main()
