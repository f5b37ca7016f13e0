"""CPU feature detection and numpy reference kernels."""
