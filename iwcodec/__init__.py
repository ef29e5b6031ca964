"""iwcodec: the command line and the project's shared error type.

The codec itself lives in the sibling packages (see docs/architecture.md):
``codec`` (model), ``sender``, ``receiver``, ``bitstream``, ``kernels``, ``eval``.
This package is a leaf every one of them may import: it holds no logic.
"""

__version__ = "0.1.0"
