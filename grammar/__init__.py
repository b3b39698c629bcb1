"""The .kdl grammar, shipped inside the package as ``kcompile.grammar``."""
