import sys

from ifl.audit.cli import main

sys.exit(main())
