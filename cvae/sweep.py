"""The old name of `python -m cvae.run.sweep DIR`, kept so that existing commands and scripts still work."""

import sys

from cvae.run.sweep import main

if __name__ == "__main__":
    print("note: `python -m cvae.sweep` is now `python -m cvae.run.sweep`", file=sys.stderr)
    sys.exit(main(sys.argv[1:]))
