"""Names every layer of the package may import (nothing here imports the package)."""

# the label of a position or example without a target: ignored by every task loss (PyTorch's cross_entropy default)
IGNORE_INDEX = -100
