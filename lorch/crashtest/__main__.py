import sys

from lorch.app.cli import main

sys.exit(main(["crashtest", *sys.argv[1:]]))
