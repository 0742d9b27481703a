"""``oblr-theory``: one entry point; each subcommand is owned by the module that implements it.

    oblr-theory verify  [--quick] [--json PATH] [--seed N]   every claim T1–T8 (oblr_theory.verify)
    oblr-theory derive  LABEL                                symbolic proof trace (oblr_theory.symbolic)
    oblr-theory figures [--quick]                            regenerate figures (oblr_theory.figures)

Out-of-range options and unknown names are usage errors (exit 2, see :mod:`oblr_theory.cliutil`).
Ctrl-C ends any command with one line on stderr and exit code 130; finished work is kept (verify's
finished rows, the experiments' result files, which resume on the next run).
"""

from __future__ import annotations

import importlib
import sys

from .cliutil import interrupted

COMMANDS = {
    "verify": ("oblr_theory.verify", "check every claim (T1–T8) exactly, symbolically and by Monte Carlo"),
    "derive": ("oblr_theory.symbolic", "print a symbolic derivation (proof trace) of a theorem"),
    "figures": ("oblr_theory.figures", "regenerate every figure from saved results"),
}


def _usage() -> str:
    lines = ["usage: oblr-theory COMMAND [options]   (oblr-theory COMMAND --help for its options)", ""]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"oblr-theory: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        return interrupted(f"oblr-theory {command}", "finished results are kept")


if __name__ == "__main__":
    sys.exit(main())
