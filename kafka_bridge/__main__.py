"""`python -m kafka_bridge [flags]`: run the scoring bridge (same flags as `fraudctl bridge run`)."""

import sys

from kafka_bridge.cli import main

sys.exit(main())
