import os
import sys

# Tests import `tests.helpers` as `helpers`.
sys.path.insert(0, os.path.dirname(__file__))
