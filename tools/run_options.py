"""The options a tool passes on to every ``cil-train`` run it starts, written after its own and a ``--``.

Shared by the tools that start runs (``method_matrix.py``, ``bench revisions``).
"""

from __future__ import annotations

import argparse

__all__ = ["parse_with_common_options"]


def parse_with_common_options(parser: argparse.ArgumentParser,
                              argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``argv`` into the tool's own options (parsed by ``parser``) and the options every run gets.

    The run options are those after ``--``. ``hatch run`` consumes the first ``--`` of its command line
    (``hatch run bench revisions A B -- --preset glyphs100-lt`` reaches the tool as ``A B --preset glyphs100-lt``),
    so without a ``--`` the options the tool does not know are the run options, provided they come after
    all of its own (a stray word or an option between the tool's own is refused, as a typo would be).
    ``parser`` should be built with ``allow_abbrev=False``: else a run's ``--seed`` would pass for a tool's
    ``--seeds``.
    """
    if "--" in argv:
        i = argv.index("--")
        return parser.parse_args(argv[:i]), argv[i + 1:]
    args, extra = parser.parse_known_args(argv)
    if extra:
        start = len(argv) - len(extra)
        if argv[start:] != extra or not extra[0].startswith("-"):
            parser.error(f"unrecognized arguments: {' '.join(extra)} (options for every run go last, "
                         "after '--'; under 'hatch run' write them last, the '--' is optional)")
    return args, extra
