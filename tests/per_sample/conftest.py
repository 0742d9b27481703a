"""The engine's tests share the bridge tests' tiny models and batches (``bridge_helpers``)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bridge"))
