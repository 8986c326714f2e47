"""`python -m fusedrnn` (also the `fusedrnn` console script).

  fusedrnn verify [--quick] ...   fused vs torch.nn vs fp64 over a matrix of configurations
  fusedrnn bench [--grid quick]   fused vs torch.nn timing, every configuration verified first
  fusedrnn tune [--grid default]  on CUDA: the fastest path per configuration, for the dispatch

With no subcommand it runs `bench --grid quick`. Exit status 1 on any FAIL.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import bench, tune, verify


def _first_sentence(doc: str) -> str:
    """A module docstring's first sentence on one line (its first line may stop mid-sentence)."""
    text = " ".join(doc.split("\n\n")[0].split())
    return text.split(". ")[0].rstrip(".") + "."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    for name, module in (("verify", verify), ("bench", bench), ("tune", tune)):
        sub = commands.add_parser(name, help=_first_sentence(module.__doc__),
                                  description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["bench"] + argv  # plain `python -m fusedrnn [bench options]`
    args = parser.parse_args(argv)
    # torch.nn says this on every CPU LSTM with proj_size; it is about torch.nn's own path.
    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
