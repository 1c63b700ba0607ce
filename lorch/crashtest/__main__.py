import sys

from lorch.cli import main

sys.exit(main(["crashtest", *sys.argv[1:]]))
