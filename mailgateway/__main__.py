"""`python -m mailgateway` is the `mailgateway` command."""

import sys

from mailgateway.cli import main

sys.exit(main())
