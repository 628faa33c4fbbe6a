"""Matched downstream benchmark: ``python benchmarks/downstream.py DATASET [options]``.

The same as ``nnunet-mim benchmark`` (see ``nnunet_mim/benchmark/`` for what it runs).
"""
import sys

from nnunet_mim.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
