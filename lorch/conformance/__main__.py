import sys

from lorch.app.cli import main

sys.exit(main(["conformance", *sys.argv[1:]]))
