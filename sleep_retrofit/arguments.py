"""argparse as every command of the toolkit uses it: a bad argument is one line on stderr and exit
status 2, without argparse's usage block (the message says where the help is)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """`prog: error: message (see prog --help)`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
