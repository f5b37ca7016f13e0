"""CPU feature detection and numpy reference kernels."""

__all__: list[str] = []  # import the submodules: isa, reference
