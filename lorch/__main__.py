import sys

from lorch.cli import main

sys.exit(main())
