"""`python -m train.infer` from a checkout: the installed command is `jglow-infer`."""
import sys

from jglow.train.infer import main

if __name__ == "__main__":
    sys.exit(main())
