"""``python -m capsprobe`` (and ``torchrun -m capsprobe train ...``)."""

from .cli import main

if __name__ == "__main__":
    main()
