r"""`python -m jaxtrain.grow`: offline growth, a trained run's checkpoint -> a bigger model's new workdir.

    python -m jaxtrain.grow --from=runs/small --to=configs/lm_small.py:base --op=stack --workdir=runs/grown

The entry point only; the tool is jaxtrain/growth/offline.py (`offline.grow`, its flags in `--help`).
"""

import sys

from jaxtrain.growth.offline import main

if __name__ == "__main__":
  sys.exit(main())
