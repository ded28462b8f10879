import sys

from modeltrack.cli import main

sys.exit(main())
