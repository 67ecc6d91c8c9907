"""Second-order preconditioners (see each file's docstring for the method's equations).

``base.py`` holds the one ``step()`` every method shares (and the non-finite checks),
``kfactored.py`` what K-FAC, KFLR and KFRA share (a layer as a matrix product, the
Kronecker-factored block, its damping, the optional rescaling and Levenberg-Marquardt
damping), ``linalg.py`` the small linear-algebra helpers.
"""
from .base import Preconditioner, CoverageWarning
from .mbf import MBF
from .bnp import BNP
from .bdf import BDF, cosine_similarity
from .kfac import KFAC
from .kfactored import KroneckerFactored
from .shampoo import Shampoo
from .kflr import KFLR
from .kfra import KFRA
