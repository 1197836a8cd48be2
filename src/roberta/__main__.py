import sys

from roberta.cli import main

sys.exit(main())
