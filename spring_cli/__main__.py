"""``python -m spring_cli``: the ``spring-rag`` command."""

import sys

from spring_cli.main import main

sys.exit(main())
