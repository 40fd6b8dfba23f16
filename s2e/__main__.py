"""``python -m s2e``: see :mod:`s2e.cli`."""

from s2e.cli import main

if __name__ == "__main__":
    main()
