"""The ``verbalize`` command line (``verbalize.cli.main:main``): argparse over the public API only."""
