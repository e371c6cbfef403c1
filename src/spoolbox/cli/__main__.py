"""``python -m spoolbox.cli``: the same as the ``spoolbox`` command."""

from . import main

if __name__ == "__main__":
    main()
