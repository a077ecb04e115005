"""`python -m deepcluster ...` (what torchrun starts) runs the command line."""

from deepcluster.cli import main

raise SystemExit(main())
