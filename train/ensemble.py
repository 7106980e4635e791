"""`python -m train.ensemble` from a checkout: the installed command is `jglow-ensemble`."""
import sys

from jglow.train.ensemble import main

if __name__ == "__main__":
    sys.exit(main())
