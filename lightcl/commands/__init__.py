"""One module per CLI verb: each defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``."""
