"""`python -m flowrl.data.rebuild`: see `flowrl.data.rebuild._cli`."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
