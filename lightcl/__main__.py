import sys

from lightcl.cli import main

sys.exit(main())
