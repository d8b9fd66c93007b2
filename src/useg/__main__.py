import sys

from useg.cli import main

sys.exit(main())
