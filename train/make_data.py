"""`python -m train.make_data` from a checkout: the installed command is `jglow-make-data`."""
import sys

from jglow.train.make_data import main

if __name__ == "__main__":
    sys.exit(main())
