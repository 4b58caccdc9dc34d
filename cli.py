"""The command-line scripts' argument parser: argparse, with every error on one line.

argparse prints the whole usage block before an error; the scripts here promise one line that
says what was expected and what arrived, and exit code 2 (argparse's own), so that line is all
that is printed, with a pointer to ``--help``.
"""
from __future__ import annotations

import argparse
import sys


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser(doc: str | None) -> OneLineErrors:
    """A parser whose ``--help`` shows ``doc`` as written (the script's docstring)."""
    return OneLineErrors(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's first line (libraries such as orbax raise pages), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
