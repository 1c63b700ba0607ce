import sys

from lorch.cli import main

sys.exit(main(["conformance", *sys.argv[1:]]))
