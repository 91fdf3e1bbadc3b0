"""`python -m segwise ...` (also what `torchrun -m segwise` runs)."""

from .cli import main

raise SystemExit(main())
