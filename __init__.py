"""iimm: the Inter-Intra Modal Measure and its peers, from one zero-shot pass."""

__version__ = "0.1.0"
