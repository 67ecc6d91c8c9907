"""Second-order preconditioners (see each file's docstring for the method's equations)."""
from .base import Preconditioner, CoverageWarning
