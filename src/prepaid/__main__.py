"""``python -m prepaid``: the same command as the ``prepaid`` console script."""

from prepaid.cli import main

if __name__ == "__main__":
    main()
