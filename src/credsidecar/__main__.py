"""`python -m credsidecar` runs the same command line as the `credsidecar` script."""

from credsidecar.cli import main

raise SystemExit(main())
