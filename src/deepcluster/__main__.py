"""`python -m deepcluster ...` (what torchrun starts) runs the command line."""

from deepcluster.entry import main

raise SystemExit(main())
