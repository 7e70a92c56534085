import sys

from opctl.cli import main

sys.exit(main())
