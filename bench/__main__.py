"""``python -m bench [--quick] [--rounds N] [--duration S] ...``: see ``bench/README.md``."""

from bench.run import main

raise SystemExit(main())
