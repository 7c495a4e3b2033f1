"""`python -m serving --model_name=... --model_base_path=...`: run the model server."""

import sys

from serving.cli import main

sys.exit(main())
