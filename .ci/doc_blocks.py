#!/usr/bin/env python3
"""Runs the fenced code blocks that Markdown pages mark runnable, and checks what they print.

A block whose fence's info string is ``sh runnable``, ``bash runnable`` or ``python
runnable`` is run; an ``output`` block after it lists lines its output must contain (each
non-blank line, compared with runs of whitespace collapsed, anywhere in stdout + stderr;
a line ``...`` is only a reader's ellipsis). The blocks of one page run in order in one
scratch folder made afresh, ``target/doc-blocks/<page>/`` (``docs-inference`` for
``docs/inference.md``), where ``tests`` and ``examples`` link to the checkout's, so a page's
commands read the repository's data as they would from its root; ``target/release`` (the
``softvi`` binary) and this Python's folder come first on PATH. Shell blocks run under
``bash -euo pipefail``, Python blocks with this interpreter. Any failure, or an ``output``
block with no runnable block before it, fails the run (exit 1) after every page was tried.
Usage: ``python3 .ci/doc_blocks.py [--list] PAGE.md ...``.

Only the Python standard library, so any Python that imports softvi can run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = {"sh": "bash", "bash": "bash", "python": "python"}
# A block may take this long (the slowest, MaxEnt IRL's sampling and 174 iterations, takes
# about 10 s on the 2-core CI machine): a hung block fails instead of stalling CI.
TIMEOUT_S = 600


@dataclass
class Block:
    """One fenced block: where it starts, its info words and its text."""

    page: Path
    line: int
    info: list[str]
    text: str
    expected: list[str] | None = None


def blocks(page: Path) -> tuple[list[Block], list[str]]:
    """The runnable blocks of a page (each with its ``output`` lines), and the page's errors."""
    found: list[Block] = []
    errors: list[str] = []
    lines = page.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(`{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).split(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            errors.append(f"{page}:{start}: the block opened here is never closed")
        i += 1
        text = "\n".join(body) + "\n"
        if info[:1] == ["output"]:
            if not found or found[-1].expected is not None:
                errors.append(f"{page}:{start}: an output block with no runnable block before it")
            else:
                found[-1].expected = [ln for ln in body if ln.strip() and ln.strip() != "..."]
        elif "runnable" in info[1:]:
            if info[0] not in RUNNERS:
                errors.append(
                    f"{page}:{start}: runnable block in {info[0]!r}; expected sh or python"
                )
            else:
                found.append(Block(page, start, info, text))
    return found, errors


def squash(s: str) -> str:
    """``s`` with every run of whitespace one space, trimmed."""
    return " ".join(s.split())


def run_page(page: Path, found: list[Block]) -> list[str]:
    """Runs a page's blocks in order in its scratch folder; the failures."""
    # One folder per page, named by its path: docs/README.md and README.md apart.
    name = str(page.relative_to(ROOT).with_suffix("")).replace(os.sep, "-").lower()
    scratch = ROOT / "target" / "doc-blocks" / name
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "docs").mkdir(parents=True)
    for shared in ("tests", "examples"):
        (scratch / shared).symlink_to(ROOT / shared)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [str(ROOT / "target" / "release"), str(Path(sys.executable).parent), env["PATH"]]
    )
    failures = []
    for block in found:
        where = f"{block.page.relative_to(ROOT)}:{block.line}"
        if RUNNERS[block.info[0]] == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", block.text]
        else:
            cmd = [sys.executable, "-c", block.text]
        started = time.monotonic()
        try:
            done = subprocess.run(
                cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
            out, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:
            out, rc = f"{e.stdout or ''}{e.stderr or ''}\n(timed out after {TIMEOUT_S} s)", -1
        seconds = time.monotonic() - started
        missing = [ln for ln in block.expected or [] if squash(ln) not in squash(out)]
        if rc != 0 or missing:
            why = f"exit status {rc}" if rc != 0 else f"output lacks {missing[0]!r}"
            failures.append(f"{where}: {why}\n--- block\n{block.text}--- output\n{out}")
            print(f"FAIL {where} ({seconds:.1f} s): {why}", flush=True)
        else:
            print(f"ok   {where} ({seconds:.1f} s)", flush=True)
    return failures


def main(argv: list[str]) -> int:
    """Checks every page named on the command line; 0 when every block passed."""
    listing = "--list" in argv
    pages = [Path(a).resolve() for a in argv if a != "--list"]
    if not pages:
        print(__doc__)
        return 2
    failures: list[str] = []
    for page in pages:
        if not page.is_file():
            failures.append(f"{page}: no such page")
            continue
        found, errors = blocks(page)
        failures += errors
        if listing:
            for b in found:
                print(f"{b.page.relative_to(ROOT)}:{b.line} {' '.join(b.info)}")
        elif found:
            failures += run_page(page, found)
    for f in failures:
        print(f"\n{f}", file=sys.stderr)
    print(f"{len(failures)} failure(s)" if failures else "every runnable block passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
