"""Second-order preconditioners (see each file's docstring for the method's equations)."""
from .base import Preconditioner, CoverageWarning
from .mbf import MBF
from .bnp import BNP
from .bdf import BDF, cosine_similarity
from .kfac import KFAC
from .shampoo import Shampoo
from .kflr import KFLR
from .kfra import KFRA
