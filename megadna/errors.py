"""The one exception type megadna raises for bad input.

Entry points catch `InputError` and print its message alone (no traceback): the message already says
what was wrong, where (file, record, line) and what to do.
"""


class InputError(ValueError):
    """Bad user input: a file, a record, a config value. The message names the place."""


def where(path, line=None, record=None) -> str:
    """Format a location for an error message: 'genome.fa, record chr1, line 12'."""
    parts = [str(path)]
    if record is not None:
        parts.append(f"record {record!r}")
    if line is not None:
        parts.append(f"line {line}")
    return ", ".join(parts)
