"""The old name of `python -m cvae.metrics.classifier` (training the reference classifier), kept so that the
command still works."""

import sys

from cvae.metrics.classifier import main

if __name__ == "__main__":
    print("note: `python -m cvae.classifier` is now `python -m cvae.metrics.classifier`", file=sys.stderr)
    main()
