"""`python -m finetune_assets.cli`."""

import sys

from finetune_assets.cli.main import main

sys.exit(main())
