"""Allow ``python -m meshvpn``."""
from meshvpn.cli import main

raise SystemExit(main())
