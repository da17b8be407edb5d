"""ifl: reproducibility package for Hinck et al. (2024)."""
