"""Checks that keep a command from destroying a user's file, before any work is done.

Every output is written under a temporary name and renamed into place when complete
(``sender.encoder.write_atomically``, ``receiver.writer.VideoWriter``), so a failed or
interrupted command never leaves half a file. These checks cover what a rename cannot: writing
over the input itself, or a stream under a name that says it is a video (and the other way
round). ``--force`` overrides them; an output that is a folder is always refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from iwcodec.errors import IWCodecError


class OutputError(IWCodecError):
    """An output name that would destroy a file or mislabel what is written."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file (also through symbolic or hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output(
    output: str | Path,
    *,
    inputs: Sequence[str | Path] = (),
    suffixes: Sequence[str] = (),
    kind: str = "file",
    force: bool = False,
) -> Path:
    """Refuse ``output`` when it is a folder, when it is one of ``inputs`` (unless ``force``),
    or when it has an extension that is not one of ``suffixes`` (unless ``force``; a name
    without an extension, or empty ``suffixes``, is not checked).

    ``kind`` names what is written ("an iwcodec stream") for the message.
    """
    output = Path(output)
    if output.is_dir():
        example = output / f"out{suffixes[0] if suffixes else output.suffix}"
        raise OutputError(f"{output}: is a folder; name a file to write, e.g. {example}")
    if force:
        return output
    for src in inputs:
        if same_file(output, src):
            how = "" if Path(src) == output else f" ({src}, through a link)"
            raise OutputError(
                f"{output}: is the input file{how}; writing there would replace it: choose "
                "another output name (or --force to replace it)"
            )
    if suffixes and output.suffix and output.suffix.lower() not in suffixes:
        raise OutputError(
            f"{output}: {kind} is written as {' or '.join(suffixes)}, and '{output.suffix}' "
            f"names another kind of file: use -o {output.with_suffix(suffixes[0]).name} "
            "(or --force to keep this name)"
        )
    return output


__all__ = ["OutputError", "check_output", "same_file"]
