import sys

from resdense.cli import main

sys.exit(main())
