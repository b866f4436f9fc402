import sys

from robustad.cli import main

sys.exit(main())
