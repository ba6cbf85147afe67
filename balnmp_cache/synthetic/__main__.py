"""`python -m balnmp_cache.synthetic --out DIR --patients N --seed S`."""

from balnmp_cache.synthetic.cli import main

raise SystemExit(main())
