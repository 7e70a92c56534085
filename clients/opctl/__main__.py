import sys

from opctl.quick import main

sys.exit(main())
