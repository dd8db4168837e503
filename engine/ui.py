"""Human-facing output that is not a parseable stdout line: warnings and notes on stderr."""

import sys


def warn(message):
    print(message, file=sys.stderr, flush=True)
