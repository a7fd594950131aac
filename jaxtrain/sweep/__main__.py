"""`python -m jaxtrain.sweep`: see jaxtrain/sweep/cli.py."""

import sys

from jaxtrain.sweep.cli import main

sys.exit(main())
