"""`python -m train.evaluate` from a checkout: the installed command is `jglow-evaluate`."""
import sys

from jglow.train.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
