"""The ``softvi`` command installed by the wheel: the Rust CLI, compiled into the extension."""

from __future__ import annotations

import signal
import sys

from . import _softvi


def main() -> None:
    """Runs ``softvi`` with the process's arguments and exits with its code."""
    # Ctrl-C stops the command as it stops the native binary (Python's handler would only set
    # a flag that the Rust code never reads).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_softvi.cli_main(["softvi", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
