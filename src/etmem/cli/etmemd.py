"""The `etmemd` daemon command (placeholder until the daemon issue)."""
import sys


def main(argv=None) -> int:
    print("etmemd: not yet implemented", file=sys.stderr)
    return 1
