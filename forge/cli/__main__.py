"""`python -m forge.cli ...` (and `torchrun -m forge.cli train ...`): the same as the `forge` command."""

from forge.cli import main

if __name__ == "__main__":
    main()
