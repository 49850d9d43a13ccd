"""``python -m linrec``: the ``linrec`` command (``linrec.tools.cli``) without relying on the console script."""

from linrec.tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
