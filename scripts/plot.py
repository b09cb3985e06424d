"""Same as ``normlab-plot``: ``python scripts/plot.py results/runs/<sweep> --out DIR``."""

from normlab.plots import main

raise SystemExit(main())
