"""``python -m oblr_theory.symbolic T2``: print a symbolic proof trace."""
import sys

from . import main

sys.exit(main())
