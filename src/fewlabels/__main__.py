"""``python -m fewlabels ...``: the same as the ``fewlabels`` command."""

import sys

from fewlabels.cli import main

sys.exit(main())
