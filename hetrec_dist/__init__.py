"""hetrec_dist: heterogeneous cryo-EM reconstruction with a sparse Fourier structural basis."""

__version__ = "0.1.0"
