"""``python -m nfkit``: the same as the ``nfkit`` command."""

from nfkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
