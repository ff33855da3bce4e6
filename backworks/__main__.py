"""`python -m backworks`: the same as the `backworks` command."""

import sys

from backworks.cli.main import main

sys.exit(main())
