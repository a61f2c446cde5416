"""``python -m gradhealth.cli``: the ``gradhealth`` command."""

import sys

from gradhealth.cli.main import main

sys.exit(main())
