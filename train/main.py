"""`python -m train.main` from a checkout: the installed command is `jglow-train`."""
import sys

from jglow.train.main import main

if __name__ == "__main__":
    sys.exit(main())
